package importer_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// TestSourceNeverGetsDestinationCredentials: a docker:// source's registry
// that asks for credentials is answered with the source's (none here),
// never with the destination's Username and Password.
func TestSourceNeverGetsDestinationCredentials(t *testing.T) {
	t.Parallel()
	const user, pass = "dest-user", "dest-password-not-for-the-source"
	var mu sync.Mutex
	var seen []string
	record := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r.Header.Get("Authorization"))
			mu.Unlock()
			next.ServeHTTP(w, r)
		})
	}
	source := newTestRegistry(t, withMiddleware(func(h http.Handler) http.Handler { return record(basicAuth("src-user", "src-pass")(h)) }))
	dest := newTestRegistry(t, withMiddleware(basicAuth(user, pass)))
	o := baseOptions(dest, "docker://"+source.host+"/disks/x:1")
	o.SourceCAFile = source.caFile
	o.Username, o.Password = user, pass
	if _, err := importer.Run(testContext(t), o); err == nil {
		t.Fatal("imported from a registry that refuses anonymous access")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("the source registry was never asked")
	}
	for _, a := range seen {
		if a != "" && !strings.HasPrefix(a, "Bearer ") {
			t.Errorf("the source registry got Authorization %q: the destination's credentials", a)
		}
	}
}
