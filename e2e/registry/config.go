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
	s3          *s3Params // nil: the filesystem under rootDir
}

// s3Params are the settings of distribution's s3 storage driver.
type s3Params struct {
	endpoint, bucket, accessKey, secretKey string
	redirectEndpoint                       string
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
%s  delete:
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
`, p.logLevel, !p.accessLogOn, storageConfig(p), q(p.addr), q(p.secret),
		q(p.certFile), q(p.keyFile), p.http2Off, q(p.realm), q(p.htpasswd))
	return b.String()
}

// storageConfig is the storage driver's part of the config. With s3,
// skipverify concerns only the registry's own connection to the store
// (the driver does not take SSL_CERT_FILE); a client that follows a
// redirect verifies the store with the CA it was given.
func storageConfig(p configParams) string {
	q := strconv.Quote
	if p.s3 == nil {
		return "  filesystem:\n    rootdirectory: " + q(p.rootDir) + "\n"
	}
	s := fmt.Sprintf(`  s3:
    accesskey: %s
    secretkey: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    bucket: %s
    secure: true
    v4auth: true
    skipverify: true
`, q(p.s3.accessKey), q(p.s3.secretKey), q(s3Region), q(p.s3.endpoint), q(p.s3.bucket))
	if p.s3.redirectEndpoint != "" {
		s += "    redirectendpoint: " + q(p.s3.redirectEndpoint) + "\n"
	}
	return s + "  redirect:\n    disable: false\n"
}
