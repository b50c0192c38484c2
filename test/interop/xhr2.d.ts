/** xhr2 (XMLHttpRequest for Node, what dicomweb-client needs) ships no types: its one export is the class. */
declare module 'xhr2' {
  const XMLHttpRequest: unknown;
  export default XMLHttpRequest;
}
