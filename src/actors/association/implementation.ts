/** How pacs-mesh names itself in association negotiation (PS3.7 D.3.3.2). A UUID-derived UID (2.25.*) needs no registered root. */
export const implementationClassUid = '2.25.165525666727457152901500760600848929073';
export const implementationVersionName = 'PACSMESH_01';
