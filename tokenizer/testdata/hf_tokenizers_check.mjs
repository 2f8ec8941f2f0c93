// Checks that the tokenizer.json this package writes (Tokenizer.MarshalJSON) is read
// by Hugging Face's own JavaScript tokenizer and gives the reference ids. Run from the
// repository root after make setup:
//
//   (cd /tmp && npm pack @huggingface/tokenizers@0.2.0 && tar xzf huggingface-tokenizers-0.2.0.tgz)
//   go run ./tokenizer/testdata/marshal-gpt2 > /tmp/gpt2-tokenizer.json
//   node tokenizer/testdata/hf_tokenizers_check.mjs /tmp/package /tmp/gpt2-tokenizer.json tokenizer/testdata/gpt2_reference.json
//
// Last run (2026-12-04): 30 strings, 0 differ.
import fs from "fs";
import path from "path";

const [pkg, tokenizerJSON, referenceJSON] = process.argv.slice(2);
const { Tokenizer } = await import(path.resolve(pkg, "dist/tokenizers.mjs"));
const tok = new Tokenizer(JSON.parse(fs.readFileSync(tokenizerJSON, "utf8")), {});
const refs = JSON.parse(fs.readFileSync(referenceJSON, "utf8"));
let differ = 0;
for (const r of refs) {
  const got = tok.encode(r.text).ids;
  if (JSON.stringify(got) !== JSON.stringify(r.ids)) {
    differ++;
    console.log("DIFF", JSON.stringify(r.text), JSON.stringify(got), JSON.stringify(r.ids));
  }
}
console.log(refs.length, "strings,", differ, "differ");
process.exit(differ === 0 ? 0 : 1);
