// Command marshal-gpt2 writes GPT-2's tokenizer (from make setup's encoder.json and
// vocab.bpe) as the tokenizer.json this package deploys, for hf_tokenizers_check.mjs.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/layermesh/layermesh/tokenizer"
)

func main() {
	t, err := tokenizer.Load("third_party/tokenizers/gpt2")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(t); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
