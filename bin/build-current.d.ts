/** True when `root`/dist holds a bundle built after the last change under `root`/src (and PACS_MESH_FROM_SOURCE is not 1). */
export function buildIsCurrent(root: string): boolean;
