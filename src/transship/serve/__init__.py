"""`transship serve`: an archive served in place as a read-only OCI registry.

`archive` indexes what the archive names, `api` answers the distribution API's read side,
`blobs` sends blob bodies (zero-copy once verified), `auth` checks htpasswd, `tls` makes a CA
and server certificate, `server` binds and runs it all.
"""
