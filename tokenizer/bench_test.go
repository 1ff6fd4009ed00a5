package tokenizer

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"orcd/gguf"
	"orcd/internal/testutil"
)

// benchCorpusSize is the size of the benchmark corpus, in bytes.
const benchCorpusSize = 10 << 20

// Fragments the benchmark corpus is drawn from: mostly English prose, then
// code, then other scripts, digits, emoji and whitespace.
var (
	benchWords = strings.Fields(`the of and to in is was that for it with as his on be at by had are but from not
		this have which one you were her all she there would their we him been has when who will more no if out so
		said what up its about into than them can only other new some could time these two may then do first any my
		now such like our over man me even most made after also did many before must through back years where much
		your way well down should because each just those people how too little state good very make world still
		own see men work long get here between both life being under never day same another know while last might
		great old year off come since against go came right used take three don't it's I'm they're we've you'll
		Internationalization tokenization inference throughput latency GPU kernel memory bandwidth`)
	benchCode = []string{
		"func (s *Server) handle(w http.ResponseWriter, r *http.Request) {\n\tif err := s.check(r); err != nil {\n\t\thttp.Error(w, err.Error(), 400)\n\t\treturn\n\t}\n}\n",
		"def forward(self, x):\n    h = self.norm(x)\n    return x + self.mlp(h) * 0.5\n\n",
		"for (size_t i = 0; i < n; ++i) { out[i] = a[i] * b[i] + c; }\n",
		"{\"model\": \"gpt-oss-20b\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 128}\n",
		"<tr><td class=\"n\">42</td><td><a href=\"/x/y?z=1\">link</a></td></tr>\r\n",
	}
	benchOther = []string{
		"我们今天去公园散步，天气很好。", "東京都渋谷区のラーメン屋さん。", "안녕하세요, 만나서 반갑습니다. ",
		"مرحبا بالعالم، كيف حالك؟ ", "नमस्ते दुनिया, आप कैसे हैं? ", "สวัสดีครับ ภาษาไทย ",
		"Привет, как дела? ", "Ελληνικά γράμματα. ", "Café crème brûlée naïve façade. ",
		"👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 😀 ", "1,234,567.89 3.14159 2026-11-26 ", "   \n\n\t\t  \r\n",
	}
)

var benchCorpus = sync.OnceValue(func() string {
	rng := rand.New(rand.NewPCG(2026, 11))
	var sb strings.Builder
	sb.Grow(benchCorpusSize + 1024)
	for sb.Len() < benchCorpusSize {
		switch p := rng.IntN(100); {
		case p < 60: // a paragraph of prose
			n := 20 + rng.IntN(80)
			for i := range n {
				w := benchWords[rng.IntN(len(benchWords))]
				if i == 0 || rng.IntN(12) == 0 {
					w = strings.ToUpper(w[:1]) + w[1:]
				}
				sb.WriteString(w)
				switch rng.IntN(15) {
				case 0:
					sb.WriteString(". ")
				case 1:
					sb.WriteString(", ")
				default:
					sb.WriteByte(' ')
				}
			}
			sb.WriteString("\n\n")
		case p < 80:
			sb.WriteString(benchCode[rng.IntN(len(benchCode))])
		default:
			for range 1 + rng.IntN(6) {
				sb.WriteString(benchOther[rng.IntN(len(benchOther))])
			}
			sb.WriteByte('\n')
		}
	}
	return sb.String()
})

// TestWriteBenchCorpus writes the benchmark corpus to the file named by
// ORCD_TOKENIZER_CORPUS, so that tools/tokenizer_bench.py can time tiktoken
// on exactly the same text.
func TestWriteBenchCorpus(t *testing.T) {
	path := os.Getenv("ORCD_TOKENIZER_CORPUS")
	if path == "" {
		t.Skip("ORCD_TOKENIZER_CORPUS not set")
	}
	if err := os.WriteFile(path, []byte(benchCorpus()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkEncode(b *testing.B) {
	corpus := benchCorpus()
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		tk, err := Embedded(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(corpus)))
			var n int
			for b.Loop() {
				n = len(tk.Encode(corpus))
			}
			b.ReportMetric(float64(n), "tokens")
		})
	}
}

// BenchmarkLoad times loading each vocabulary the ways a server does: a GGUF
// file (open, parse its metadata, build the tokenizer) and a tokenizer.json
// already read into memory.
func BenchmarkLoad(b *testing.B) {
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		v, err := VocabGGUF(name)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(b.TempDir(), name+".gguf")
		if err := gguf.WriteFile(path, vocabWriter(v), nil); err != nil {
			b.Fatal(err)
		}
		b.Run("gguf/"+name, func(b *testing.B) {
			for b.Loop() {
				f, err := gguf.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := FromGGUF(f); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		data := testutil.ReadGzip(b, "testdata/"+name+".tokenizer.json.gz")
		b.Run("hf-json/"+name, func(b *testing.B) {
			for b.Loop() {
				if _, err := FromHFJSONBytes(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// What `orcd synth` pays once per process for o200k_harmony: parsing the
	// embedded ranks and deriving the merges.
	b.Run("embedded/"+VocabO200kHarmony, func(b *testing.B) {
		for b.Loop() {
			if _, err := loadO200kHarmonyVocab(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
