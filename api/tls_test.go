package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/node"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns their paths
// and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "layermesh test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS serves the API over TLS (--tls-cert/--tls-key): a client that trusts the
// certificate infers; plain HTTP to the same port gets no API answer.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	n := startNodeTLS(t, certFile, keyFile, pool)
	if !strings.HasPrefix(n.URL(), "https://") {
		t.Fatalf("URL %s is not https", n.URL())
	}
	resp, err := http.Get("http://" + n.Addr() + "/v2/health/live")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP to the TLS listener answered 200")
		}
	}
}

func startNodeTLS(t *testing.T, certFile, keyFile string, pool *x509.CertPool) *node.Node {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	t.Cleanup(hc.CloseIdleConnections)
	n := startNodeWith(t, hc, func(c *node.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	c := n.client(t, "")
	res, err := c.Infer(context.Background(), "add", &wire.Request{Inputs: []tensor.Tensor{tensor.FromFloat32("x", []int64{1, 3}, []float32{0, 0, 0})}}, client.InferOptions{BinaryInputs: true})
	if err != nil {
		t.Fatalf("infer over TLS: %v", err)
	}
	y, _ := res.Output("y")
	if got, _ := y.Float32s(); len(got) != 3 || got[2] != 3 {
		t.Errorf("y = %v", got)
	}
	return n.Node
}
