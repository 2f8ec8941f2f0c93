// Writes gpt2_reference.json: GPT-2 token ids for a set of strings, computed by the
// reference JavaScript encoder of the gpt-3-encoder npm package (a port of OpenAI's
// encoder.py). Run from the repository root:
//
//   (cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz)
//   node tokenizer/testdata/reference.js /tmp/package > tokenizer/testdata/gpt2_reference.json
//
// The strings avoid two spots where that encoder is known to differ from GPT-2's
// Python one: U+0085 and U+FEFF (JavaScript's \s differs from Unicode White_Space) and
// runs of commas (it keys merge ranks by "a,b" strings).
const path = require('path');
const { encode, decode } = require(path.resolve(process.argv[2], 'Encoder.js'));

const strings = [
  "Hello world",
  "Hello, world! How are you today?",
  "The quick brown fox jumps over the lazy dog.",
  "I'm sure they're here, we've seen it, you'll see, he'd go, it's John's.",
  "DON'T SHOUT'S 'quoted' and ''double''",
  "Café crème brûlée, naïve façade, jalapeño, Ærøskøbing, Straße",
  "Emoji: 😀🎉👍🏽 and 👨‍👩‍👧 family, flags 🇫🇷🇯🇵",
  "  leading spaces",
  "trailing spaces   ",
  "multiple   spaces    between\twords",
  "line one\nline two\n\nline four\r\n",
  "\t\ttabs\t and  \n  mixed \n\n\n whitespace",
  "   ",
  " ",
  "\n",
  "numbers 123 4567 89.01 1,000,000 3.14159 and ½ ⅔ ²",
  "日本語のテキストと中文文本 한국어",
  "Ελληνικά и русский текст, עברית, العربية",
  "code: func main() { fmt.Println(\"hi\") } // x += 1; y := a[i]",
  "<html><body class=\"x\">Tag &amp; entity</body></html>",
  "URLs https://example.com/path?q=1&r=two#frag and user@example.org",
  "a",
  "ab",
  "",
  "!!!???...---",
  "mixedCASE camelCase snake_case kebab-case SCREAMING_CASE",
  "   indented code\n      more indented\n",
  "tokenization's edge-cases: 'tis, ol' days, rock 'n' roll",
  "\u00a0non-breaking\u00a0space and\u2003em space",
  "Zero\u200bwidth and combining e\u0301 accents",
];

const out = strings.map(text => {
  const ids = encode(text);
  if (decode(ids) !== text) {
    throw new Error("reference encoder does not round-trip " + JSON.stringify(text));
  }
  return { text, ids };
});
process.stdout.write("[\n" + out.map(e => JSON.stringify(e)).join(",\n") + "\n]\n");
