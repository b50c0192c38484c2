/**
 * What a data directory keeps of the mesh it was part of, read when a peer starts without --swarm-key:
 * custody's known sites and replication debt (in the store). A directory that knows other sites was a mesh
 * site, and running it alone by mistake (a unit file that lost --swarm-key) would acknowledge C-STOREs on one
 * copy and stop paying what it owes the others, so the start is refused unless --standalone yes says it is
 * meant (hunt 163). A lone site started with a key that never met another site knows none: it starts. The sites
 * of the peers saved in known-peers.json count too: a catalog rebuilt at the open (found damaged) knows no site,
 * and such a directory ran alone (hunt 181).
 */
import { ConfigError } from './config.ts';
import { readKnownPeers } from './net/known-peers.ts';
import { startReadError, type ReplicaStore } from './actors/storage/replica-store.ts';
import { isCatalogDamage } from './actors/storage/catalog.ts';
import { countUp } from './keyed-counts.ts';

/** The mesh state found in a data directory: the other sites it knows or owes copies to. */
export interface MeshState {
  /** Other sites custody knows (not forgotten) or owes copies to, sorted. */
  readonly otherSites: readonly string[];
  /** Replication debt entries among the first debtKeysReadMax keys: copies this site owes to other sites. */
  readonly debtEntries: number;
  /** The debt table holds more keys than the check reads: debtEntries is a lower bound. */
  readonly debtEntriesMore?: true;
  /** Some of otherSites are named only by known-peers.json's saved peers (withSitesOfSavedPeers). */
  readonly namedBySavedPeers?: true;
}

/**
 * `state` with the sites other than `ownSite` that saved peers name (known-peers.json): what a data directory
 * keeps of its mesh outside the store, which a catalog rebuilt at the open (found damaged) lost.
 */
export function withSitesOfSavedPeers(state: MeshState, savedPeerSites: readonly string[], ownSite: string): MeshState {
  const added = savedPeerSites.filter((site) => site !== ownSite && !state.otherSites.includes(site));
  if (added.length === 0) return state;
  return { ...state, otherSites: [...new Set([...state.otherSites, ...added])].sort(), namedBySavedPeers: true };
}

/** The sites of the peers saved in `dataDir`'s known-peers.json (none when it is absent or unreadable). */
export async function sitesOfSavedPeers(dataDir: string): Promise<string[]> {
  // No PeerId of its own to leave out: a peer never saves itself.
  const { peers } = await readKnownPeers(dataDir, '');
  return peers.flatMap((peer) => (peer.site === undefined ? [] : [peer.site]));
}

/**
 * Debt keys a start without --swarm-key reads at most (17-40 ms here): whether copies are owed, and to which
 * sites among the first ones, costs the same whether the site owes ten thousand copies or ten million (hunt 169).
 */
export const debtKeysReadMax = 10_000;

/** Sites the error line names; more are counted, not named (/api/mesh lists them all). */
const sitesNamedMax = 8;

/**
 * The mesh state of these records (pure): the sites other than `ownSite` that are known or owed copies.
 * `debtBySite` counts the debt entries read per site, not the entries themselves; `debtKeysUnread` says the
 * table holds more. Copies owed to a forgotten site (a tombstone, not known) are none: custody drops them at
 * its first view (a crash between a forgetting's tombstone and its debt removals leaves them), so they refuse nothing.
 */
export function meshStateOf(
  knownSites: readonly { siteName: string }[],
  debtBySite: ReadonlyMap<string, number>,
  ownSite: string,
  forgottenSites: readonly { siteName: string }[] = [],
  debtKeysUnread = false,
): MeshState {
  const known = new Set(knownSites.map((s) => s.siteName));
  const forgotten = new Set(forgottenSites.map((s) => s.siteName).filter((name) => !known.has(name)));
  const owed = [...debtBySite].filter(([siteName]) => siteName !== ownSite && !forgotten.has(siteName));
  const otherSites = new Set([...known, ...owed.map(([siteName]) => siteName)].filter((name) => name !== ownSite));
  return { otherSites: [...otherSites].sort(), debtEntries: owed.reduce((sum, [, entries]) => sum + entries, 0), ...(debtKeysUnread ? { debtEntriesMore: true as const } : {}) };
}

/**
 * Reads the mesh state of an open store at `storePath`: the known and forgotten sites (bounded by custody)
 * and the sites named by the first debtKeysReadMax debt keys, counted per site; a damaged site record is
 * skipped, and a read LevelDB refuses is one line naming the store and the way out: for a damaged table, the
 * catalog's rebuild (an empty data directory, the advice before, dropped the instances too: hunt 169).
 */
export async function readMeshState(store: Pick<ReplicaStore, 'listKnownSites' | 'listForgottenSites' | 'debtSiteNames'>, ownSite: string, storePath: string): Promise<MeshState> {
  try {
    const debtBySite = new Map<string, number>();
    let debtKeysRead = 0;
    // One key past the bound tells "more" from "exactly that many"; the loop stops there whatever the store yields.
    for await (const siteName of store.debtSiteNames(debtKeysReadMax + 1)) {
      if (++debtKeysRead > debtKeysReadMax) break;
      if (siteName !== '') countUp(debtBySite, siteName);
    }
    return meshStateOf(await store.listKnownSites(), debtBySite, ownSite, await store.listForgottenSites(), debtKeysRead > debtKeysReadMax);
  } catch (error) {
    // Not marked for a rebuild here: the rebuilt catalog knows no site, so a start restarted without its key
    // (what this check is for, under a service manager that restarts it) would run alone at the next try.
    const wayOut = `its catalog is damaged, not the instances: if it was a mesh site, start it with --swarm-key FILE (that start marks the catalog, the next rebuilds it from the instances' commit records); or else move ${storePath}/catalog away to have it rebuilt (it then knows no site)`;
    throw startReadError(storePath, "custody's records (known sites, copies owed) that a start without --swarm-key checks", error, isCatalogDamage(error) ? wayOut : undefined);
  }
}

/** Whether the state shows a mesh site: another site known or owed copies. */
export function wasMeshSite(state: MeshState): boolean {
  return state.otherSites.length > 0 || state.debtEntries > 0;
}

/** "site-b, site-c" or "site-b, ... and 3 more". */
function sitesText(sites: readonly string[]): string {
  const named = sites.slice(0, sitesNamedMax).join(', ');
  return sites.length > sitesNamedMax ? `${named} and ${sites.length - sitesNamedMax} more` : named;
}

/** "2 copies", or "at least 10000 copies" when the check read only the first debt keys. */
function copiesOwedText(state: Pick<MeshState, 'debtEntries' | 'debtEntriesMore'>): string {
  return `${state.debtEntriesMore ? 'at least ' : ''}${state.debtEntries} ${state.debtEntries === 1 ? 'copy' : 'copies'}`;
}

/** What the data directory shows, for the refusal and the standalone warning. */
export function meshStateText(state: MeshState): string {
  const owed = state.debtEntries > 0 ? ` and owes ${state.otherSites.length === 1 ? 'it' : 'them'} ${copiesOwedText(state)}` : '';
  const knows = state.namedBySavedPeers ? 'its store and known-peers.json know' : 'its store knows';
  return `${knows} ${state.otherSites.length === 1 ? 'site' : `${state.otherSites.length} sites`} ${sitesText(state.otherSites)}${owed}`;
}

/**
 * The refusal of a mesh site's data directory started without --swarm-key (exit 2). `site`: the start's --site,
 * whose default data directory (.data/SITE) is `npm start`'s for that site: a bare `pacs-mesh start` after
 * `npm start` meets site-a's mesh directory without having named it, so the line says so and offers another --data.
 */
export function startedWithoutSwarmKeyError(dataDirArg: string, site: string, state: MeshState): ConfigError {
  const isDefault = dataDirArg === `.data/${site}`;
  const directory = `--data ${dataDirArg}${isDefault ? ` (the default for --site ${site})` : ''}`;
  const anotherData = isDefault ? ', or --data DIR for an archive of its own' : '';
  return new ConfigError(
    `${directory} was a mesh site (${meshStateText(state)}), and without --swarm-key it would run alone: C-STOREs acknowledged on its one copy, nothing owed sent: add --swarm-key FILE to rejoin the mesh, --standalone yes to run it alone on purpose${anotherData}`,
  );
}
