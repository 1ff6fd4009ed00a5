package tokenizer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"orcd/gguf"
	"orcd/internal/testutil"
)

// The benchmark corpora are three kinds of text, each about benchCorpusSize
// bytes, generated deterministically (seeded PCGs, committed samples) so that
// tools/tokenizer_bench.py times tiktoken on exactly the bytes that
// BenchmarkEncode times orcd on.
const benchCorpusSize = 8 << 20

// benchCorpus is one named corpus and its generator.
type benchCorpus struct {
	name string
	gen  func(testing.TB) string
}

var benchCorpora = []benchCorpus{
	{"multilingual", func(testing.TB) string { return multilingualCorpus() }},
	{"prose", func(tb testing.TB) string { return shuffledBlocks(tb, "testdata/bench/prose-opticks.txt.gz", 1) }},
	{"code", func(tb testing.TB) string { return shuffledBlocks(tb, "testdata/bench/code-go-python.txt.gz", 2) }},
}

var (
	corpusMu    sync.Mutex
	corpusCache = map[string]string{}
)

// text returns the corpus, generating it on first use.
func (c benchCorpus) text(tb testing.TB) string {
	corpusMu.Lock()
	defer corpusMu.Unlock()
	s, ok := corpusCache[c.name]
	if !ok {
		s = c.gen(tb)
		corpusCache[c.name] = s
	}
	return s
}

// shuffledBlocks reads a committed sample of real text (see
// testdata/bench/README.md), splits it into blocks at blank lines, and writes
// all the blocks in a fresh seeded order each round until the corpus holds
// benchCorpusSize bytes.
func shuffledBlocks(tb testing.TB, path string, seed uint64) string {
	blocks := strings.SplitAfter(string(testutil.ReadGzip(tb, path)), "\n\n")
	rng := rand.New(rand.NewPCG(2026, seed))
	var sb strings.Builder
	sb.Grow(benchCorpusSize + 1<<20)
	for sb.Len() < benchCorpusSize {
		for _, i := range rng.Perm(len(blocks)) {
			sb.WriteString(blocks[i])
		}
	}
	return sb.String()
}

// Material for the multilingual corpus: words of the languages written with
// spaces, clauses of those written without, and the other kinds of text that
// make a pre-tokenizer work (emoji sequences, code, whitespace, digits).
var (
	mlWords = map[string][]string{
		"ru": strings.Fields(`и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь
			год от так о для ты же все тот мочь вы человек такой его сказать только или ещё бы себя один уже до время
			если сам когда другой вот говорить наш мой знать стать при чтобы дело жизнь кто первый очень два день её
			новый рука даже во со раз где там под можно ну какой после их работа без самый потом надо хотеть ли слово
			идти большой должен место иметь ничто Москва Россия программирование обработка естественного языка
			токенизация модели сервер запрос ответ`),
		"el": strings.Fields(`και το να του η της με που την από για τα είναι σε οι ο των θα στο δεν τον ένα στην στη
			τις μια αλλά τους ότι πολύ όπως έχει στα ήταν μου μας όταν πιο μόνο κάθε χρόνια ακόμα ενώ αυτό μετά σήμερα
			χώρα κυβέρνηση άνθρωποι ζωή ημέρα πόλη νερό θάλασσα ήλιος ιστορία γλώσσα γράμματα βιβλίο δουλειά σπίτι
			φίλος Αθήνα Ελλάδα υπολογιστής πρόγραμμα`),
		"he": strings.Fields(`של את על לא הוא זה עם כל היא אני גם או אם כי מה יש היה אבל הם רק אל עוד אין בין כמו
			יותר אחד שלום עולם ספר בית ילד יום שנה עיר מים ארץ אנשים שפה עברית חדש טוב גדול קטן הרבה מאוד תודה
			בבקשה ירושלים מחשב תוכנה שְׁלוֹם עִבְרִית`),
		"ar": strings.Fields(`في من على أن إلى عن مع هذا كان التي الذي لا ما هو هي قد كل بين بعد ذلك عند حتى كانت
			هذه أو ثم لم يوم سنة العالم الناس اللغة العربية مدينة كتاب بيت ماء شمس مرحبا شكرا كثيرا جديد كبير صغير
			الحكومة التعليم الطعام القاهرة الحاسوب البرمجة اللُّغَةُ العَرَبِيَّةُ`),
		"ko": strings.Fields(`안녕하세요 감사합니다 대한민국 서울 사람 시간 오늘 내일 학교 회사 컴퓨터 프로그램 언어
			한국어 문장 입니다 있습니다 없습니다 그리고 하지만 그래서 우리는 나는 당신은 정말 아주 많이 먹었습니다
			갔습니다 공부 도서관 친구 가족 날씨 좋다 음식 맛있다 서버 모델 토큰`),
		"latin": strings.Fields(`café crème brûlée naïve façade Ångström Øresund Æsir Łódź Gdańsk Kraków Nguyễn Thị
			Minh Khai São Paulo coração Straße Größe Übung İstanbul Dvořák señor años jalapeño Zürich`),
	}
	mlClauses = map[string][]string{
		"zh": strings.Fields(`我们今天去公园散步 天气很好 这是一个简单的例子 人工智能正在改变世界 请在下面输入你的名字
			北京是中国的首都 我喜欢读书和写字 他每天早上六点起床 这个问题比较复杂 我们需要更多的时间 服务器返回了一个错误
			模型的推理速度非常快 中华人民共和国成立于一九四九年 春眠不觉晓处处闻啼鸟 学而时习之不亦说乎 经济发展和环境保护
			欢迎来到我们的网站 数据已经保存成功 龘靐齉爨`),
		"ja": strings.Fields(`東京都渋谷区のラーメン屋さん 今日はとても良い天気ですね 日本語の文章を書いています
			コンピュータープログラミング ありがとうございました 新しいモデルをダウンロードしてください 吾輩は猫である
			名前はまだ無い すみません駅はどこですか ひらがなとカタカナと漢字 明日の会議は午後三時からです`),
	}
	mlCJKPunct = []string{"，", "。", "、", "！", "？", "：", "「", "」", "（", "）", "；"}
	mlEmoji    = strings.Fields(`😀 😂 👍 👍🏽 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🏴‍☠️ 🇯🇵 🇺🇸 🇩🇪 1️⃣ #️⃣ ❤️ 🧑🏿‍🚀 👩🏻‍❤️‍💋‍👨🏼
		🤷‍♀️ 🫠 🎉 🔥 ✨ 🙏🏾 👨🏻‍🔬 🧑‍🤝‍🧑 ©️ ™️`)
	mlCode = []string{
		"func (s *Server) handle(w http.ResponseWriter, r *http.Request) {\n\tif err := s.check(r); err != nil {\n\t\thttp.Error(w, err.Error(), 400)\n\t\treturn\n\t}\n}\n",
		"def forward(self, x):\n    h = self.norm(x)\n    return x + self.mlp(h) * 0.5\n\n",
		"for (size_t i = 0; i < n; ++i) { out[i] = a[i] * b[i] + c; }\n",
		"{\"model\": \"gpt-oss-20b\", \"messages\": [{\"role\": \"user\", \"content\": \"你好，世界\"}], \"max_tokens\": 128}\n",
		"<tr><td class=\"n\">42</td><td><a href=\"/x/y?z=1\">link</a></td></tr>\r\n",
	}
	mlSpaces = []string{" ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0"}
)

// pickFrom returns a random element of s.
func pickFrom[T any](rng *rand.Rand, s []T) T { return s[rng.IntN(len(s))] }

// multilingualCorpus is text in many scripts: Chinese and Japanese (runs
// without spaces, some longer than a line), Korean, Russian, Greek, Hebrew
// and Arabic (some with vowel marks), Latin with diacritics, emoji with skin
// tones and ZWJ sequences, code, whitespace runs and long digit runs.
func multilingualCorpus() string {
	rng := rand.New(rand.NewPCG(2026, 3))
	spaced := []string{"ru", "ru", "el", "he", "ar", "ar", "ko", "latin"}
	var sb strings.Builder
	sb.Grow(benchCorpusSize + 1<<20)
	for sb.Len() < benchCorpusSize {
		switch p := rng.IntN(100); {
		case p < 40: // a paragraph of Chinese or Japanese
			clauses := mlClauses[pickFrom(rng, []string{"zh", "zh", "ja"})]
			runOn := rng.IntN(8) == 0 // a paragraph with no punctuation: one long piece
			for range 2 + rng.IntN(10) {
				sb.WriteString(pickFrom(rng, clauses))
				if !runOn && rng.IntN(4) > 0 { // else the next clause runs on
					sb.WriteString(pickFrom(rng, mlCJKPunct))
				}
			}
			sb.WriteByte('\n')
		case p < 80: // a paragraph in a spaced script
			words := mlWords[pickFrom(rng, spaced)]
			for i := range 5 + rng.IntN(40) {
				if i > 0 {
					sb.WriteByte(' ')
				}
				sb.WriteString(pickFrom(rng, words))
				switch rng.IntN(12) {
				case 0:
					sb.WriteByte('.')
				case 1:
					sb.WriteByte(',')
				}
			}
			sb.WriteString(".\n")
		case p < 87: // emoji, spaced or in a row
			apart := rng.IntN(2) == 0
			for range 1 + rng.IntN(12) {
				sb.WriteString(pickFrom(rng, mlEmoji))
				if apart {
					sb.WriteByte(' ')
				}
			}
			sb.WriteByte('\n')
		case p < 93:
			sb.WriteString(pickFrom(rng, mlCode))
		case p < 97: // a whitespace run, sometimes a long one, then a word
			for range 1 + rng.IntN(pickFrom(rng, []int{8, 8, 8, 200})) {
				sb.WriteString(pickFrom(rng, mlSpaces))
			}
			sb.WriteString(pickFrom(rng, mlWords[pickFrom(rng, spaced)]))
		default: // a long run of digits
			for range 10 + rng.IntN(300) {
				sb.WriteByte(byte('0' + rng.IntN(10)))
			}
			sb.WriteString(pickFrom(rng, []string{" ", ".", "\n", ", "}))
		}
	}
	return sb.String()
}

// TestWriteBenchCorpus writes each benchmark corpus to DIR/NAME.txt, where
// DIR is $ORCD_TOKENIZER_CORPUS, and the ids of its Encode with each embedded
// vocabulary to DIR/NAME.VOCAB.ids (little-endian int32), so that
// tools/tokenizer_bench.py can time tiktoken on the same bytes and compare
// its ids with these.
func TestWriteBenchCorpus(t *testing.T) {
	dir := os.Getenv("ORCD_TOKENIZER_CORPUS")
	if dir == "" {
		t.Skip("ORCD_TOKENIZER_CORPUS not set")
	}
	var toks []*Tokenizer
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		tk, err := Embedded(name)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tk)
	}
	for _, c := range benchCorpora {
		text := c.text(t)
		if err := os.WriteFile(filepath.Join(dir, c.name+".txt"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		for i, name := range []string{VocabO200kHarmony, VocabGPT2} {
			var buf bytes.Buffer
			if err := binary.Write(&buf, binary.LittleEndian, toks[i].Encode(text)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s.%s.ids", c.name, name)), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// BenchmarkEncode times Encode over each corpus with each embedded
// vocabulary; "tokens" is the number of ids.
func BenchmarkEncode(b *testing.B) {
	for _, name := range []string{VocabO200kHarmony, VocabGPT2} {
		tk, err := Embedded(name)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range benchCorpora {
			text := c.text(b)
			b.Run(name+"/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(len(text)))
				var n int
				cpu0 := cpuTime()
				for b.Loop() {
					n = len(tk.Encode(text))
				}
				reportCPU(b, cpuTime()-cpu0, len(text))
				b.ReportMetric(float64(n), "tokens")
			})
		}
	}
}

// reportCPU adds the CPU time per operation to a benchmark's metrics, as
// cpu-MB/s for bytes per operation: on a shared machine it is steadier than
// the wall time behind MB/s.
func reportCPU(b *testing.B, cpu time.Duration, bytes int) {
	if cpu > 0 && b.N > 0 {
		b.ReportMetric(float64(bytes)*float64(b.N)/cpu.Seconds()/(1<<20), "cpu-MB/s")
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
