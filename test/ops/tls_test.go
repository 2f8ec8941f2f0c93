package ops

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

	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/test/harness"
)

// selfSigned writes a certificate for 127.0.0.1 and its key; it returns their paths
// and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "layermesh ops test"},
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
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLSWithMeshctl runs a meshnode process with --tls-cert/--tls-key: meshctl with
// --ca-cert reads its status and infers over https, meshctl without it refuses the
// unknown certificate (exit 1), and plain HTTP to the port gets no API answer.
func TestTLSWithMeshctl(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	modelDir := filepath.Join(dir, "models")
	if err := os.MkdirAll(modelDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeModel(t, smallGPT, filepath.Join(modelDir, "small.onnx"))
	dataDir := filepath.Join(dir, "data")
	p := harness.StartProc(t, harness.ProcSpec{
		Name: "tls-node", Path: harness.MeshnodeBinary(t), LogDir: dir,
		Args: []string{"--data-dir", dataDir, "--name", "tls-node", "--http", "127.0.0.1:0", "--model-dir", modelDir,
			"--tls-cert", certFile, "--tls-key", keyFile, "--threads", "1", "--log-format", "json"},
	})
	addr, err := harness.ReadAddrFile(p, filepath.Join(dataDir, harness.HTTPAddrFile), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	t.Cleanup(hc.CloseIdleConnections)
	harness.Eventually(t, 2*time.Minute, 100*time.Millisecond, func() error {
		resp, err := hc.Get("https://" + addr + "/v2/health/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errorString("ready answered " + resp.Status)
		}
		return nil
	})
	if resp, err := http.Get("http://" + addr + "/v2/health/live"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP to the TLS listener answered 200")
		}
	}

	oc := &opsCluster{meshctl: harness.BuildBinary(t, "./cmd/meshctl"), tokenFile: filepath.Join(dataDir, harness.AdminTokenFile)}
	run := func(args ...string) ctlResult {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return oc.run(t, ctx, "https://"+addr, args...)
	}
	r := run("status", "--json", "--ca-cert", certFile)
	var rep statusReport
	if r.code != 0 || decodeStrict(r.stdout, &rep) != nil || !rep.Readiness.Ready || rep.Cluster == nil || rep.Cluster.Mode != "single-node" ||
		!strings.HasPrefix(rep.Address, "https://") {
		t.Fatalf("status over TLS: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = run("infer", "small", "--input", gptInput+"=1,2,3,4", "--shape", gptInput+"=1x4", "--ca-cert", certFile, "--json")
	resp, err := wire.DecodeResponse([]byte(strings.TrimSpace(r.stdout)), -1)
	if r.code != 0 || err != nil || len(resp.Outputs) != 1 || len(resp.Outputs[0].Shape) != 3 || resp.Outputs[0].Shape[2] != int64(smallGPT.Vocab) {
		t.Fatalf("infer over TLS: exit %d, %v, %s", r.code, err, r.stderr)
	}
	r = run("status")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("status over TLS without --ca-cert: exit %d %q, want 1 and a certificate error", r.code, r.stderr)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
