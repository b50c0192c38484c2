/**
 * QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered from the catalog by the
 * C-FIND engine, so both see the same matches with the same PS3.4 C.2.2.2 matching rules. In a mesh the
 * catalog here holds every site's instances (they reach every site), as C-FIND at this site does.
 */
import { Tags, registryTagOf, vrOf } from '../../codec/dictionary.ts';
import type { DicomElement, Tag, Vr } from '../../codec/dicom-types.ts';
import { toDicomJson, type DicomJsonObject } from '../../codec/dataset/dicom-json.ts';
import { binaryVrs } from '../../codec/dataset/vr.ts';
import { isAcceptableUid } from '../../codec/uid.ts';
import { isCatalogDamage } from '../../actors/storage/catalog.ts';
import { QueryError, findMatchesWithCursors, type QueryCursor, type QueryRequest } from '../../actors/storage/query/query.ts';
import { searchKeyOf } from './search-cursors.ts';
import { errorText } from '../../actors/runtime/logger.ts';
import { requireDicomJson, type DicomJsonMediaType } from './accept.ts';
import { sendJson } from '../respond.ts';
import { DicomWebError, endAndDrain, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { holdingInstance } from './instances.ts';
import type { DicomWebRoute, SearchLevel } from './routes.ts';

type SearchRoute = Extract<DicomWebRoute, { type: 'search' }>;

/** Results in one response at most: a client pages beyond it with offset (and is told so in a Warning). */
export const searchResultsMax = 10_000;

/**
 * JSON text of one response at most: results beyond it are left for the next page, as beyond
 * searchResultsMax. 10,000 results of a few attributes of 1 KiB made 35 MB; 30 clients that did not read
 * theirs held 4 GB of the peer's memory (hunt 79).
 */
export const searchResponseBytesMax = 8 * 1024 * 1024;
/**
 * A response of this size or more is counted in the budget of bytes held at once (ctx.heldInstanceBytes)
 * until the client has read it; smaller ones (a study list: ~1 KB a study) go at once, not waiting behind
 * retrieves of large instances, and 1,024 connections of them hold 256 MiB at most.
 */
const searchResponseHeldFromBytes = 256 * 1024;

const InstanceAvailability = 0x00080056;
const RetrieveURL = 0x00081190;

/** The attributes each level returns unasked (PS3.18 Tables 10.6.3-5 to -7), with this archive's VRs. */
const DEFAULT_ATTRIBUTES: Readonly<Record<SearchLevel, readonly Tag[]>> = {
  STUDY: [
    Tags.StudyDate, Tags.StudyTime, Tags.AccessionNumber, Tags.ModalitiesInStudy, Tags.ReferringPhysicianName,
    Tags.PatientName, Tags.PatientID, Tags.PatientBirthDate, Tags.PatientSex, Tags.StudyInstanceUID, Tags.StudyID,
    Tags.NumberOfStudyRelatedSeries, Tags.NumberOfStudyRelatedInstances, Tags.TimezoneOffsetFromUTC,
  ],
  SERIES: [
    Tags.Modality, Tags.SeriesDescription, Tags.SeriesInstanceUID, Tags.SeriesNumber, Tags.NumberOfSeriesRelatedInstances,
    0x00400244 /* PerformedProcedureStepStartDate */, 0x00400245 /* PerformedProcedureStepStartTime */, Tags.TimezoneOffsetFromUTC,
  ],
  IMAGE: [
    Tags.SOPClassUID, Tags.SOPInstanceUID, Tags.InstanceNumber, Tags.Rows, Tags.Columns, Tags.BitsAllocated,
    Tags.NumberOfFrames, Tags.TimezoneOffsetFromUTC,
  ],
};

/** `includefield=all`: the defaults of every level down to the searched one, and the descriptions viewers show. */
const ALL_EXTRA_ATTRIBUTES: readonly Tag[] = [
  Tags.StudyDescription, 0x00101010 /* PatientAge */, Tags.InstitutionName, Tags.BodyPartExamined, Tags.SeriesDate, Tags.SeriesTime,
];

const LEVELS: readonly SearchLevel[] = ['STUDY', 'SERIES', 'IMAGE'];

export async function searchEntities(ctx: DicomWebContext, exchange: DicomWebExchange, route: SearchRoute): Promise<void> {
  // PS3.18 8.3.3.1.
  const answerType = requireDicomJson(exchange.req.headers.accept, 'search results are');
  const search = parseSearch(route, exchange.query);
  // A catalog known to be incomplete (a site refilling after an empty disk) says "retry", as C-FIND does.
  const refusal = ctx.retrieveSource.searchRefusal?.();
  if (refusal !== undefined) throw new DicomWebError(503, 'ERR_DICOMWEB_SEARCH_REFUSED', refusal);
  // Later in a refill, the front door sends a C-FIND's association to a whole site; a search is redirected
  // there (307 keeps the method), or refused when no whole site is alive, never answered with part of the matches.
  const elsewhere = ctx.searchElsewhere?.();
  if (elsewhere !== undefined) {
    if (elsewhere.httpAddress === undefined) throw new DicomWebError(503, 'ERR_DICOMWEB_SEARCH_REFUSED', `${elsewhere.reason}, and no whole site is alive: retry`);
    exchange.res.setHeader('location', `http://${elsewhere.httpAddress}${exchange.req.url ?? ''}`);
    sendJson(exchange.res, 307, { error: `${elsewhere.reason}: the search goes to a whole site, ${elsewhere.httpAddress}`, code: 'ERR_DICOMWEB_REFILLING' });
    return;
  }
  // The response is made whole (its Warning says whether matches were left out, known only at the end). Its
  // first 256 KiB are gathered outside the budget of bytes held at once (a study list goes at once, not waiting
  // behind retrieves of large instances); a larger one takes its place in the budget, weighed at the bound of
  // a response, before it gathers more, and holds it until the client has read it. Gathered whole first, the
  // responses waiting their turn held theirs outside the budget (helper 98: 20 clients not reading an 8 MiB
  // search held 168 MiB for a budget of 12 MiB; 256 may wait).
  const gathering = gatherResults(ctx, exchange, route, search);
  try {
    const first = await gathering.next();
    if (first.done === true) {
      await sendResults(exchange, search, first.value, answerType);
      return;
    }
    await holdingInstance(ctx, exchange, searchResponseBytesMax, async () => {
      const rest = await gathering.next();
      if (rest.done !== true) throw new Error('the results were gathered in more than two parts');
      await sendResults(exchange, search, rest.value, answerType);
    });
  } finally {
    await gathering.return(undefined as never);
  }
}

/** What a search found: the results' JSON texts, and whether more matched than they hold. */
interface GatheredResults {
  results: string[];
  truncated: boolean;
  tooLarge: boolean;
}

/**
 * The matches as JSON texts: it yields once when they reach searchResponseHeldFromBytes with more to come
 * (the caller then takes its place in the budget and asks for the rest), and returns them all.
 */
async function* gatherResults(ctx: DicomWebContext, exchange: DicomWebExchange, route: SearchRoute, search: ParsedSearch): AsyncGenerator<void, GatheredResults> {
  // Each match is kept as its JSON text: a 10,000-match answer then weighs its bytes, not 10,000 object trees.
  const results: string[] = [];
  let resultsBytes = 2;
  let truncated = false;
  let tooLarge = false;
  let held = false;
  // The page before this one ended here lately: the search resumes after it, not walking the matches before.
  const cursors = ctx.searchCursors;
  const searchKey = searchKeyOf(search.request);
  const after = search.offset > 0 ? cursors.take(searchKey, search.offset, ctx.clock.nowMs()) : undefined;
  let lastCursor: QueryCursor | undefined;
  try {
    // A client that leaves stops the search (helper 98: a scan matching nothing read on to the end of the level).
    const stopped = () => exchange.req.socket.destroyed;
    // Without a cursor the engine passes the matches before the offset, as cheaply as the keys allow.
    const skip = after === undefined ? search.offset : 0;
    const matches = findMatchesWithCursors(ctx.store.db, search.request, { limit: search.limit + 1, skip, stopped, after });
    for await (const { identifier, cursor } of matches) {
      if (results.length === search.limit) {
        truncated = true;
        break;
      }
      const result = JSON.stringify(resultOf(identifier, route.level, exchange.baseUrl));
      // A comma before each but the first.
      resultsBytes += Buffer.byteLength(result) + 1;
      if (resultsBytes > searchResponseBytesMax && results.length > 0) {
        tooLarge = true;
        break;
      }
      results.push(result);
      lastCursor = cursor;
      if (!held && resultsBytes >= searchResponseHeldFromBytes) {
        held = true;
        yield;
      }
    }
  } catch (error) {
    if (error instanceof QueryError) throw new DicomWebError(400, 'ERR_DICOMWEB_QUERY', error.message);
    if (isCatalogDamage(error)) ctx.store.reportCatalogDamage(`QIDO-RS: ${errorText(error)}`);
    throw new DicomWebError(500, 'ERR_DICOMWEB_SEARCH', `search failed: ${errorText(error)}`);
  }
  // More matches to come: the next page, at the offset after this one's last result, resumes here.
  if ((truncated || tooLarge) && lastCursor !== undefined) cursors.put(searchKey, search.offset + results.length, lastCursor, ctx.clock.nowMs());
  return { results, truncated, tooLarge };
}

/** The results as a DICOM JSON array, with the Warning headers that say what was left out or ignored. */
async function sendResults(exchange: DicomWebExchange, search: ParsedSearch, { results, truncated, tooLarge }: GatheredResults, answerType: DicomJsonMediaType): Promise<void> {
  // A client gone during the search stopped it: nobody reads what it found.
  if (exchange.req.socket.destroyed) return;
  const warnings: string[] = [];
  for (const flag of search.unsupportedFlagsAsked) warnings.push(`299 pacs-mesh "The ${flag} parameter is not supported. ${unsupportedFlags[flag]}"`);
  if (search.ignored.length > 0) warnings.push(`299 pacs-mesh "Unsupported query parameters have been ignored: ${search.ignored.map((name) => name.replace(/[^\x20-\x7e]|"|\\/g, '?')).join(', ')}"`);
  // PS3.18 8.3.4.4: more matches than returned, and not because the client asked for fewer: say so.
  if (tooLarge) warnings.push(`299 pacs-mesh "The size of the results exceeded the maximum supported by the server (${searchResponseBytesMax / (1024 * 1024)} MiB) after ${results.length} results. Additional results can be requested with offset."`);
  else if (truncated && !search.limitAsked) warnings.push(`299 pacs-mesh "The number of results exceeded the maximum supported by the server (${searchResultsMax}). Additional results can be requested with offset."`);
  if (warnings.length > 0) exchange.res.setHeader('warning', warnings);
  // 200 with an empty array when nothing matches (CP-2473; RFC 9110 15.3.5 gives 204 no body at all).
  // As bytes at once: only they are held while the client reads, not the text beside them.
  const body = Buffer.from(`[${results.join(',')}]`, 'utf8');
  results.length = 0;
  exchange.res.writeHead(200, { 'content-type': answerType, 'content-length': body.length });
  await endAndDrain(exchange.res, body);
}

interface ParsedSearch {
  request: QueryRequest;
  offset: number;
  limit: number;
  limitAsked: boolean;
  /** Matching extensions asked for (=true) that are not performed: each gets a Warning. */
  unsupportedFlagsAsked: UnsupportedFlag[];
  /** Parameters that are neither a control of PS3.18 8.3.4 nor an attribute, ignored as 8.3 says (the first few named). */
  ignored: string[];
}

/** PS3.18 Table 8.3.4-1's matching extensions, none performed: what the Warning says for each (8.3.4.3, 8.3.4.5, 8.3.4.6). */
const unsupportedFlags = {
  fuzzymatching: 'Only literal matching has been performed.',
  emptyvaluematching: 'Empty Value Matching has not been performed.',
  multiplevaluematching: 'Multiple Value Matching has not been performed.',
} as const;
type UnsupportedFlag = keyof typeof unsupportedFlags;
const isUnsupportedFlag = (name: string): name is UnsupportedFlag => Object.hasOwn(unsupportedFlags, name);

/** Ignored parameters named in the Warning header: enough to spot a misspelt keyword, bounded. */
const ignoredNamedMax = 5;

/** The query parameters as a C-FIND identifier (PS3.18 8.3.4), or a 400 naming the parameter at fault. */
export function parseSearch(route: SearchRoute, query: URLSearchParams): ParsedSearch {
  const badRequest = (message: string) => new DicomWebError(400, 'ERR_DICOMWEB_QUERY', message);
  const keys = new Map<Tag, DicomElement>();
  const put = (tag: Tag, value: string) => keys.set(tag, { tag, vr: vrOf(tag) ?? 'UN', value });
  // Query values are Unicode in the URL: sent to the engine as UTF-8 bytes, named so.
  put(Tags.SpecificCharacterSet, 'ISO_IR 192');
  const depth = LEVELS.indexOf(route.level);
  // The unique keys of the levels above are always returned: a client builds the next URL from them.
  for (const level of LEVELS.slice(0, depth + 1)) {
    const searchedHere = level === route.level || (level === 'STUDY' && route.studyUid === undefined) || (level === 'SERIES' && route.seriesUid === undefined);
    if (searchedHere) for (const tag of DEFAULT_ATTRIBUTES[level]) put(tag, '');
  }
  put(Tags.StudyInstanceUID, route.studyUid ?? '');
  if (depth >= 1) put(Tags.SeriesInstanceUID, route.seriesUid ?? '');
  if (depth >= 2) put(Tags.SOPInstanceUID, '');

  let offset = 0;
  let limit = searchResultsMax;
  let limitAsked = false;
  const flagsAsked = new Set<UnsupportedFlag>();
  const ignored: string[] = [];
  const seen = new Set<string>();
  const once = (name: string): void => {
    if (seen.has(name)) throw badRequest(`parameter ${name.slice(0, 80)} is given twice`);
    seen.add(name);
  };
  for (const [name, value] of query) {
    // `?&includefield=...` (Weasis sends it) has an empty one.
    if (name === '') continue;
    if (name === 'includefield') {
      for (const field of value.split(',')) {
        if (field === 'all') {
          for (const level of LEVELS.slice(0, depth + 1)) for (const tag of DEFAULT_ATTRIBUTES[level]) if (!keys.has(tag)) put(tag, '');
          for (const tag of ALL_EXTRA_ATTRIBUTES) if (!keys.has(tag)) put(tag, '');
          continue;
        }
        const tag = attributeTagOf(field);
        if (tag === undefined) throw badRequest(`includefield "${field.slice(0, 80)}" is neither a keyword nor a tag (8 hex digits), nor "all"`);
        if (!keys.has(tag)) put(tag, '');
      }
      continue;
    }
    if (name === 'limit' || name === 'offset') {
      once(name);
      if (!/^[0-9]{1,9}$/.test(value)) throw badRequest(`${name} must be a whole number, not "${value.slice(0, 40)}"`);
      if (name === 'offset') offset = Number(value);
      else {
        limit = Math.min(Number(value), searchResultsMax);
        // A limit above the maximum is cut to it: then the Warning says so, as when none was asked.
        limitAsked = Number(value) <= searchResultsMax;
      }
      continue;
    }
    if (isUnsupportedFlag(name)) {
      once(name);
      if (value !== 'true' && value !== 'false') throw badRequest(`${name} must be true or false, not "${value.slice(0, 40)}"`);
      if (value === 'true') flagsAsked.add(name);
      continue;
    }
    if (name.includes('.')) throw badRequest(`matching on attributes inside sequences (${name.slice(0, 80)}) is not supported`);
    const tag = attributeTagOf(name);
    // The values in the URL are Unicode, sent to the engine as UTF-8 whatever set a client names: naming
    // another made their bytes that set's text, so `müller*` matched nothing (helper 98).
    if (tag === undefined || tag === Tags.SpecificCharacterSet) {
      // PS3.18 8.3: unsupported parameters are ignored (a cache-buster `_=...`, a vendor's own); the Warning names them.
      const shown = name.slice(0, 64);
      if (ignored.length < ignoredNamedMax && !ignored.includes(shown)) ignored.push(shown);
      continue;
    }
    once(name);
    // A control character is in no value a search can match (a NUL read as padding matched everything: helper 60).
    if (/[\x00-\x1f\x7f]/.test(value)) throw badRequest(`the value of ${name.slice(0, 80)} holds a control character`);
    const vr = vrOf(tag);
    if (vr === undefined || vr === 'SQ' || vr === 'UN') throw badRequest(`attribute ${name.slice(0, 80)} cannot be matched${vr === 'SQ' ? ': it is a sequence' : ''}`);
    const pathUid = tag === Tags.StudyInstanceUID ? route.studyUid : tag === Tags.SeriesInstanceUID ? route.seriesUid : undefined;
    if (pathUid !== undefined) throw badRequest(`${name} is already given by the path`);
    // A UID list may be separated by commas or backslashes (PS3.18 8.3.4.1); so may a list of code strings,
    // whose values hold no comma (`ModalitiesInStudy=CT,MR`, as Orthanc takes it).
    // The `+` of a UTC offset arrives as a space when the client left it unencoded (form encoding reads `+`
    // as a space): `20200101120000 0500` can only have meant `+0500` (a space has no place there).
    const text =
      vr === 'UI' || vr === 'CS'
        ? value.replaceAll(',', '\\')
        : vr === 'DT' || tag === Tags.TimezoneOffsetFromUTC
          ? value.replace(/(^|\d) (\d{4})(?=$|-)/g, '$1+$2')
          : value;
    // A UID list of what can be no UID matches nothing: a 400, as the same UID in the path is (PS3.18 8.3: an
    // invalid value of a supported parameter); it was 200 [] (hunt 196). A lone `*` is universal matching.
    if (vr === 'UI' && text !== '' && text !== '*' && text.split('\\').some((uid) => !isAcceptableUid(uid))) throw badRequest(`${name.slice(0, 80)} holds what is not a UID (digits and dots, at most 64 characters): "${value.slice(0, 80)}"`);
    keys.set(tag, { tag, vr, value: Buffer.from(text, 'utf8').toString('latin1') });
  }
  return {
    request: { root: 'STUDY', level: route.level, keys: [...keys.values()] },
    offset,
    limit,
    limitAsked,
    unsupportedFlagsAsked: [...flagsAsked],
    ignored,
  };
}

/** A keyword ("PatientName") or a tag as eight hex digits ("00100010"). */
function attributeTagOf(name: string): Tag | undefined {
  if (/^[0-9A-Fa-f]{8}$/.test(name)) return parseInt(name, 16) >>> 0;
  return /^[A-Za-z][A-Za-z0-9]*$/.test(name) ? registryTagOf(name) : undefined;
}

/** VRs whose values the catalog does not keep (see "What the catalog keeps" in docs/conformance.md). */
function isNeverCataloged(vr: string): boolean {
  return vr === 'SQ' || binaryVrs.has(vr as Vr);
}

/** One match as DICOM JSON: the engine's identifier, decoded, with where to retrieve the entity. */
function resultOf(identifier: readonly DicomElement[], level: SearchLevel, baseUrl: string): DicomJsonObject {
  const characterSet = identifier.find((element) => element.tag === Tags.SpecificCharacterSet)?.value;
  const valueOf = (tag: Tag) => identifier.find((element) => element.tag === tag)?.value ?? '';
  let url = `${baseUrl}/studies/${valueOf(Tags.StudyInstanceUID)}`;
  if (level !== 'STUDY') url += `/series/${valueOf(Tags.SeriesInstanceUID)}`;
  if (level === 'IMAGE') url += `/instances/${valueOf(Tags.SOPInstanceUID)}`;
  const elements = identifier
    // The values are Unicode in JSON: the character set they were stored in says nothing here. What the catalog
    // never keeps (sequences, binary values) is left out, not sent empty: `{"vr":"SQ"}` says "no items", when
    // the instance's metadata has some (hunt 196); C-FIND's zero-length key says "unknown" instead.
    .filter((element) => element.tag !== Tags.SpecificCharacterSet && element.tag !== Tags.QueryRetrieveLevel && !(isNeverCataloged(element.vr) && (element.value ?? '') === ''));
  elements.push({ tag: InstanceAvailability, vr: 'CS', value: 'ONLINE' }, { tag: RetrieveURL, vr: 'UR', value: url });
  return toDicomJson(elements, characterSet);
}
