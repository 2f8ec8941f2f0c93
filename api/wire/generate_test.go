package wire

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

func TestGenerateRequestMergesParameters(t *testing.T) {
	var req GenerateRequest
	body := `{"text_input":"hi","max_tokens":5,"temperature":0.5,"stop_words":"","stop":["a"],"parameters":{"max_tokens":7,"top_k":3,"stop_words":["b","c"]}}`
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatal(err)
	}
	p := req.Merged()
	if *p.MaxTokens != 7 || *p.Temperature != 0.5 || *p.TopK != 3 || !slices.Equal(p.Stop, []string{"a"}) || !slices.Equal(p.StopWords, []string{"b", "c"}) {
		t.Errorf("merged %+v", p)
	}
	if err := json.Unmarshal([]byte(`{"text_input":"x","stop":{"a":1}}`), &req); !errors.Is(err, ErrBadJSON) {
		t.Errorf("stop as an object: %v, want ErrBadJSON", err)
	}
}

// FuzzDecodeGenerateRequest: any body either fails to decode or yields parameters
// that merge without a panic and re-encode to a request that decodes the same.
func FuzzDecodeGenerateRequest(f *testing.F) {
	f.Add([]byte(`{"text_input":"What is ML?","parameters":{"max_tokens":20,"temperature":0.7,"seed":1}}`))
	f.Add([]byte(`{"text_input":"x","max_tokens":3,"bad_words":"","stop_words":""}`))
	f.Add([]byte(`{"text_input":"x","stop":"\n","parameters":{"stop":["a","b"],"stream":true}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req GenerateRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		p := req.Merged()
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		var again GenerateRequest
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("re-decoding %s: %v", b, err)
		}
		q := again.Merged()
		if !slices.Equal(p.Stop, q.Stop) || !slices.Equal(p.StopWords, q.StopWords) || again.TextInput != req.TextInput {
			t.Fatalf("round trip changed the request: %s", b)
		}
	})
}
