package registry

import (
	"fmt"
	"strconv"
	"strings"
)

// configParams are the values substituted into the registry's YAML config.
type configParams struct {
	addr        string
	secret      string
	rootDir     string
	certFile    string
	keyFile     string
	htpasswd    string
	realm       string
	http2Off    bool
	logLevel    string
	accessLogOn bool
}

// renderConfig produces a distribution v3 (config "version: 0.1") YAML file.
// Key names follow configuration.Configuration in
// github.com/distribution/distribution/v3@v3.1.2/configuration.
//
// Strings are emitted as double-quoted scalars via strconv.Quote, whose
// escapes are a subset of YAML's double-quoted escapes.
func renderConfig(p configParams) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, `version: 0.1
log:
  level: %s
  formatter: text
  accesslog:
    disabled: %t
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
  tls:
    certificate: %s
    key: %s
    minimumtls: tls1.2
  http2:
    disabled: %t
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: %s
    path: %s
`, p.logLevel, !p.accessLogOn, q(p.rootDir), q(p.addr), q(p.secret),
		q(p.certFile), q(p.keyFile), p.http2Off, q(p.realm), q(p.htpasswd))
	return b.String()
}
