// Command mockoidc: github.com/oauth2-proxy/mockoidc (a test-only OIDC provider) as a process, for the
// oauth2-proxy test of tests/ingress. Test infrastructure only, never part of rayhistory.
//
//	mockoidc -addr 127.0.0.1:P -control 127.0.0.1:Q -client-id ID -client-secret SECRET
//
// The provider serves discovery, authorize, token, userinfo and JWKS on -addr. The next login is the user
// last POSTed (JSON: subject, email, preferred_username, groups) to http://-control/next-user; each POST
// queues one login.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"

	"github.com/oauth2-proxy/mockoidc"
)

type nextUser struct {
	Subject           string   `json:"subject"`
	Email             string   `json:"email"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address of the OIDC provider")
	control := flag.String("control", "127.0.0.1:0", "address of the test's control endpoint")
	clientID := flag.String("client-id", "", "the one client's id")
	clientSecret := flag.String("client-secret", "", "the one client's secret")
	flag.Parse()

	m, err := mockoidc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	m.ClientID, m.ClientSecret = *clientID, *clientSecret
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Start(ln, nil); err != nil {
		log.Fatal(err)
	}
	log.Printf("issuer %s", m.Issuer())

	mux := http.NewServeMux()
	mux.HandleFunc("/next-user", func(w http.ResponseWriter, r *http.Request) {
		var u nextUser
		if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&u) != nil || u.Subject == "" {
			http.Error(w, "POST a JSON user with a subject", http.StatusBadRequest)
			return
		}
		m.QueueUser(&mockoidc.MockUser{Subject: u.Subject, Email: u.Email, EmailVerified: true,
			PreferredUsername: u.PreferredUsername, Groups: u.Groups})
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	log.Fatal(http.ListenAndServe(*control, mux))
}
