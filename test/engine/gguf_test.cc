// GGUF loader: well-formed files parse to the right values; malformed ones (truncated at every length,
// random or mutated bytes, bad magic or version, hostile counts, lengths, dims and offsets) end in the
// right kvf::Error code, never a crash. Inputs are parsed from exact-size heap copies, so AddressSanitizer
// sees any read past the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <set>

#include "engine/dequant.h"
#include "engine/gguf.h"
#include "gguf_builder.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::GgufBuilder;
using testing::ThrownCode;

constexpr const char* kBad = "KVF_ERR_BAD_MODEL";
constexpr const char* kUnsupported = "KVF_ERR_UNSUPPORTED_TENSOR_TYPE";

std::string ParseCode(const std::vector<uint8_t>& bytes, const GgufOptions& options = {}) {
  // A fresh exact-size allocation: one byte too far is a heap-buffer-overflow under ASan.
  std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size() ? bytes.size() : 1]);
  if (!bytes.empty()) std::memcpy(copy.get(), bytes.data(), bytes.size());
  return ThrownCode([&] { GgufFile::Parse(copy.get(), bytes.size(), options); });
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Touches everything a parsed file exposes (metadata values of every kind, every tensor's first and last
// row), so that a parse that "succeeded" on corrupt input is also read end to end.
void Exercise(const GgufFile& f) {
  for (const auto& [key, v] : f.metadata()) {
    (void)key;
    if (v.is_array()) {
      if (v.array_type() == GgufType::STRING) {
        for (std::string_view s : v.Strings()) (void)s.size();
      } else {
        ThrownCode([&] { v.Floats(); });
        ThrownCode([&] { v.Ints(); });
      }
    } else {
      ThrownCode([&] { v.AsFloat(); });
      ThrownCode([&] { v.AsString(); });
    }
  }
  std::vector<float> row;
  for (const GgufTensor& t : f.tensors()) {
    if (!CanDequantize(t.type)) continue;
    row.resize(t.row_length());
    DequantizeRow(t, 0, row.data());
    DequantizeRow(t, t.rows() - 1, row.data());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Well-formed files

TEST(Gguf, ParsesBuiltFile) {
  auto bytes = GgufBuilder::Default().Build();
  auto f = GgufFile::Parse(bytes.data(), bytes.size());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  EXPECT_EQ(f->Get("general.architecture").AsString(), "llama");
  EXPECT_EQ(f->Get("llama.block_count").AsUInt(), 1u);
  EXPECT_EQ(f->Find("nope"), nullptr);
  EXPECT_EQ(ThrownCode([&] { f->Get("nope"); }), kBad);
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensor& w = f->GetTensor("w.weight");
  EXPECT_EQ(w.type, GgmlType::Q8_0);
  EXPECT_EQ(w.n_dims, 2u);
  EXPECT_EQ(w.ne[0], 64u);
  EXPECT_EQ(w.rows(), 2u);
  EXPECT_EQ(w.n_bytes, 136u);
  EXPECT_EQ(w.row_bytes(), 68u);
  EXPECT_EQ(w.ShapeString(), "[64, 2]");
  EXPECT_EQ(w.data, bytes.data() + f->data_offset() + w.offset);
  EXPECT_EQ(w.data[0], 3);  // the builder's fill pattern
  EXPECT_EQ(ThrownCode([&] { w.row(2); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { f->GetTensor("missing"); }), kBad);
}

TEST(Gguf, AcceptsVersion2) {
  auto b = GgufBuilder::Default();
  b.version = 2;
  auto bytes = b.Build();
  EXPECT_EQ(GgufFile::Parse(bytes.data(), bytes.size())->version(), 2u);
}

TEST(Gguf, HonoursAlignment) {
  auto b = GgufBuilder::Default();
  b.alignment = 128;
  b.write_alignment_key = true;
  b.tensors.clear();
  b.AddTensor("a", {64}, 0, 256);
  b.AddTensor("b", {32}, 0, 128);
  auto bytes = b.Build();
  auto f = GgufFile::Parse(bytes.data(), bytes.size());
  EXPECT_EQ(f->alignment(), 128u);
  EXPECT_EQ(f->data_offset() % 128, 0u);
  EXPECT_EQ(f->GetTensor("b").offset, 256u);
}

TEST(Gguf, ZeroTensorsNeedNoDataSection) {
  testing::ByteWriter w;
  w.U32(0x46554747);
  w.U32(3);
  w.U64(0);
  w.U64(1);
  auto kv = GgufBuilder::KvU32("x", 7);
  w.Raw(kv.data(), kv.size());
  auto f = GgufFile::Parse(w.bytes.data(), w.bytes.size());
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->Get("x").AsUInt(), 7u);
}

TEST(Gguf, AllValueTypes) {
  testing::ByteWriter w;
  auto key = [&](const std::string& k, uint32_t type) {
    w.Str(k);
    w.U32(type);
  };
  key("u8", 0); w.U8(200);
  key("i8", 1); w.U8(0xFF);
  key("u16", 2); w.U8(0x34); w.U8(0x12);
  key("i16", 3); w.U8(0xFE); w.U8(0xFF);
  key("u32", 4); w.U32(4000000000u);
  key("i32", 5); w.U32(static_cast<uint32_t>(-5));
  key("f32", 6); w.F32(1.5f);
  key("bool", 7); w.U8(1);
  key("str", 8); w.Str(std::string("a\0b", 3));
  key("u64", 10); w.U64(~0ull);
  key("i64", 11); w.U64(static_cast<uint64_t>(-9));
  key("f64", 12); { double d = 0.25; w.Raw(&d, 8); }
  key("arr_i32", 9); w.U32(5); w.U64(3); w.U32(1); w.U32(static_cast<uint32_t>(-2)); w.U32(3);
  key("arr_str", 9); w.U32(8); w.U64(2); w.Str("x"); w.Str("");
  key("arr_f32", 9); w.U32(6); w.U64(2); w.F32(0.5f); w.F32(-1);
  key("arr_bool", 9); w.U32(7); w.U64(2); w.U8(0); w.U8(1);
  key("arr_empty", 9); w.U32(4); w.U64(0);
  testing::ByteWriter file;
  file.U32(0x46554747);
  file.U32(3);
  file.U64(0);
  file.U64(17);
  file.Raw(w.bytes.data(), w.bytes.size());
  auto f = GgufFile::Parse(file.bytes.data(), file.bytes.size());

  EXPECT_EQ(f->Get("u8").AsUInt(), 200u);
  EXPECT_EQ(f->Get("i8").AsInt(), -1);
  EXPECT_EQ(ThrownCode([&] { f->Get("i8").AsUInt(); }), kBad);  // negative
  EXPECT_EQ(f->Get("u16").AsUInt(), 0x1234u);
  EXPECT_EQ(f->Get("i16").AsInt(), -2);
  EXPECT_EQ(f->Get("u32").AsUInt(), 4000000000u);
  EXPECT_EQ(f->Get("i32").AsInt(), -5);
  EXPECT_EQ(f->Get("f32").AsFloat(), 1.5);
  EXPECT_EQ(f->Get("u32").AsFloat(), 4000000000.0);
  EXPECT_TRUE(f->Get("bool").AsBool());
  EXPECT_EQ(f->Get("str").AsString(), std::string_view("a\0b", 3));
  EXPECT_EQ(f->Get("u64").AsUInt(), ~0ull);
  EXPECT_EQ(ThrownCode([&] { f->Get("u64").AsInt(); }), kBad);  // does not fit int64
  EXPECT_EQ(f->Get("i64").AsInt(), -9);
  EXPECT_EQ(f->Get("f64").AsFloat(), 0.25);
  EXPECT_EQ(ThrownCode([&] { f->Get("f32").AsUInt(); }), kBad);
  EXPECT_EQ(ThrownCode([&] { f->Get("str").AsFloat(); }), kBad);
  EXPECT_EQ(ThrownCode([&] { f->Get("u8").AsString(); }), kBad);
  EXPECT_EQ(ThrownCode([&] { f->Get("u8").AsBool(); }), kBad);

  const GgufValue& ai = f->Get("arr_i32");
  EXPECT_TRUE(ai.is_array());
  EXPECT_EQ(ai.array_type(), GgufType::INT32);
  EXPECT_EQ(ai.Ints(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(ai.FloatAt(1), -2.0);
  EXPECT_EQ(ThrownCode([&] { ai.IntAt(3); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { ai.Strings(); }), kBad);
  EXPECT_EQ(ThrownCode([&] { ai.AsUInt(); }), kBad);
  const GgufValue& as = f->Get("arr_str");
  ASSERT_EQ(as.Strings().size(), 2u);
  EXPECT_EQ(as.Strings()[0], "x");
  EXPECT_EQ(as.Strings()[1], "");
  EXPECT_EQ(ThrownCode([&] { as.Ints(); }), kBad);
  EXPECT_EQ(f->Get("arr_f32").Floats(), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(ThrownCode([&] { f->Get("arr_f32").IntAt(0); }), kBad);
  EXPECT_EQ(f->Get("arr_bool").Ints(), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(f->Get("arr_empty").size(), 0u);
  EXPECT_TRUE(f->Get("arr_empty").Ints().empty());
  EXPECT_EQ(ThrownCode([&] { f->Get("u8").Ints(); }), kBad);

  // Metadata keeps file order.
  EXPECT_EQ(f->metadata().front().first, "u8");
  EXPECT_EQ(f->metadata().back().first, "arr_empty");
}

// ---------------------------------------------------------------------------------------------------------
// Malformed headers and metadata

TEST(Gguf, RejectsBadMagicAndVersions) {
  auto b = GgufBuilder::Default();
  b.magic = 0x46554748;
  EXPECT_EQ(ParseCode(b.Build()), kBad);
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u, 0xFFFFFFFFu}) {
    b = GgufBuilder::Default();
    b.version = v;
    EXPECT_EQ(ParseCode(b.Build()), kBad) << "version " << v;
  }
  EXPECT_EQ(ParseCode({}), kBad);
  EXPECT_EQ(ParseCode({'G', 'G', 'U'}), kBad);
  EXPECT_EQ(ParseCode({'G', 'G', 'U', 'F'}), kBad);
}

TEST(Gguf, RejectsHugeCounts) {
  for (int64_t n : {int64_t{1} << 40, int64_t{0x7FFFFFFFFFFFFFFF}, int64_t{3}}) {
    auto b = GgufBuilder::Default();
    b.tensor_count_override = n;
    EXPECT_EQ(ParseCode(b.Build()), kBad) << "tensor count " << n;
    b = GgufBuilder::Default();
    b.kv_count_override = n;
    EXPECT_EQ(ParseCode(b.Build()), kBad) << "kv count " << n;
  }
}

// A one-entry metadata section (raw bytes) in an otherwise empty file.
std::vector<uint8_t> WithMetadata(const std::vector<uint8_t>& entry, uint64_t n_kv = 1) {
  testing::ByteWriter w;
  w.U32(0x46554747);
  w.U32(3);
  w.U64(0);
  w.U64(n_kv);
  w.Raw(entry.data(), entry.size());
  return w.bytes;
}

TEST(Gguf, RejectsBadMetadata) {
  testing::ByteWriter w;
  // Key length far past the end.
  w.U64(1ull << 62);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Key length wrapping the cursor.
  w = {};
  w.U64(~0ull - 3);
  w.Raw("abcd", 4);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Unknown value type.
  w = {};
  w.Str("k");
  w.U32(13);
  w.U64(0);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // String value longer than the file.
  w = {};
  w.Str("k");
  w.U32(8);
  w.U64(100);
  w.Raw("short", 5);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Huge string array.
  w = {};
  w.Str("k");
  w.U32(9);
  w.U32(8);
  w.U64(1ull << 60);
  w.Str("a");
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Numeric array whose byte size overflows 64 bits.
  w = {};
  w.Str("k");
  w.U32(9);
  w.U32(10);
  w.U64(1ull << 62);
  w.U64(0);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Nested array.
  w = {};
  w.Str("k");
  w.U32(9);
  w.U32(9);
  w.U64(1);
  w.U32(4);
  w.U64(1);
  w.U32(0);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Array of an unknown type.
  w = {};
  w.Str("k");
  w.U32(9);
  w.U32(77);
  w.U64(0);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Bool that is neither 0 nor 1, scalar and in an array.
  w = {};
  w.Str("k");
  w.U32(7);
  w.U8(2);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  w = {};
  w.Str("k");
  w.U32(9);
  w.U32(7);
  w.U64(2);
  w.U8(1);
  w.U8(9);
  EXPECT_EQ(ParseCode(WithMetadata(w.bytes)), kBad);
  // Duplicate key.
  auto kv = GgufBuilder::KvU32("k", 1);
  std::vector<uint8_t> two = kv;
  two.insert(two.end(), kv.begin(), kv.end());
  EXPECT_EQ(ParseCode(WithMetadata(two, 2)), kBad);
  EXPECT_EQ(ParseCode(WithMetadata(kv, 1)), "");
}

TEST(Gguf, RejectsBadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    auto b = GgufBuilder::Default();
    b.kv.push_back(GgufBuilder::KvU32("general.alignment", a));
    EXPECT_EQ(ParseCode(b.Build()), kBad) << "alignment " << a;
  }
  auto b = GgufBuilder::Default();
  b.kv.push_back(GgufBuilder::KvString("general.alignment", "32"));
  EXPECT_EQ(ParseCode(b.Build()), kBad);
}

// ---------------------------------------------------------------------------------------------------------
// Malformed tensor infos

TEST(Gguf, RejectsBadTensorInfos) {
  auto with = [](auto mutate) {
    auto b = GgufBuilder::Default();
    mutate(b);
    return ParseCode(b.Build());
  };
  EXPECT_EQ(with([](GgufBuilder&) {}), "");
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {64, 1, 1, 1, 2}; }), kBad);  // 5 dims
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[0].dims = {}; }), kBad);                // no dims
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[0].name = ""; }), kBad);
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {64, 1, 1, 2}; }), "");      // 4 dims
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {64, 0}; }), kBad);           // zero dim
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {48, 2}; }), kBad);           // not whole Q8_0 blocks
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {1ull << 32, 1ull << 32}; }), kBad);  // elements overflow
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {1ull << 62, 2}; }), kBad);  // > INT64_MAX elements
  // Element count fits int64 but the F32 byte size overflows 64 bits.
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[0].dims = {1ull << 62}; }), kBad);
  // Bytes needed far beyond the file.
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].dims = {64, 1ull << 40}; }), kBad);
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].offset += 1; }), kBad);  // misaligned
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[1].name = b.tensors[0].name; }), kBad);  // duplicate name
  auto beyond = [&](uint64_t offset) {
    return with([&](GgufBuilder& b) {
      b.tensors[1].offset = offset;
      b.tensors[1].write_data = false;
    });
  };
  EXPECT_EQ(beyond(1ull << 20), kBad);          // past EOF
  EXPECT_EQ(beyond(~0ull - 31), kBad);          // offset + size wraps around
  EXPECT_EQ(beyond(1ull << 63), kBad);
  // Last tensor one byte short.
  auto b = GgufBuilder::Default();
  auto bytes = b.Build();
  bytes.pop_back();
  EXPECT_EQ(ParseCode(bytes), kBad);
  // Long names are fine.
  EXPECT_EQ(with([](GgufBuilder& b) { b.tensors[0].name.assign(5000, 'x'); }), "");
  // Tensors claimed but the file ends right after the infos (data section missing).
  b = GgufBuilder::Default();
  for (auto& t : b.tensors) t.write_data = false;
  bytes = b.Build();
  EXPECT_EQ(ParseCode(bytes), kBad);
}

TEST(Gguf, TensorTypes) {
  auto with_type = [](uint32_t type, size_t n_bytes, const GgufOptions& o = {}) {
    auto b = GgufBuilder::Default();
    b.tensors.pop_back();
    b.AddTensor("t", {256, 2}, type, n_bytes);
    return ParseCode(b.Build(), o);
  };
  EXPECT_EQ(with_type(99, 1024), kUnsupported);  // not a ggml type
  EXPECT_EQ(with_type(20, 1024), kUnsupported);  // IQ4_NL: a ggml type we do not know
  EXPECT_EQ(with_type(13, 2 * 176), kUnsupported);  // Q5_K: known, not dequantizable
  GgufOptions lenient;
  lenient.require_dequantizable = false;
  EXPECT_EQ(with_type(13, 2 * 176, lenient), "");
  EXPECT_EQ(with_type(99, 1024, lenient), kUnsupported);
  EXPECT_EQ(with_type(13, 2 * 176 - 1, lenient), kBad);  // and still bounds-checked
  // Sizes of the dequantizable types.
  EXPECT_EQ(with_type(30, 2 * 256 * 2), "");   // BF16
  EXPECT_EQ(with_type(12, 2 * 144), "");       // Q4_K
  EXPECT_EQ(with_type(14, 2 * 210), "");       // Q6_K
  EXPECT_EQ(with_type(3, 2 * 8 * 20), "");     // Q4_1
  EXPECT_EQ(with_type(2, 2 * 8 * 18), "");     // Q4_0
  EXPECT_EQ(with_type(14, 2 * 210 - 1), kBad);

  auto b = GgufBuilder::Default();
  b.tensors.pop_back();
  b.AddTensor("t", {256, 2}, 13, 2 * 176);
  auto bytes = b.Build();
  auto f = GgufFile::Parse(bytes.data(), bytes.size(), lenient);
  std::vector<float> row(256);
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(f->GetTensor("t"), 0, row.data()); }), kUnsupported);
}

TEST(Gguf, OpenReportsMissingAndNonRegularFiles) {
  EXPECT_EQ(ThrownCode([] { GgufFile::Open("/nonexistent/model.gguf"); }), kBad);
  EXPECT_EQ(ThrownCode([] { GgufFile::Open("/tmp"); }), kBad);
  EXPECT_EQ(ThrownCode([] { GgufFile::Open("/dev/null"); }), kBad);
}

// ---------------------------------------------------------------------------------------------------------
// Random and mutated input

TEST(Gguf, RandomBytes) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> bytes(rng() % 2048);
    for (auto& x : bytes) x = static_cast<uint8_t>(rng());
    if (i % 2 && bytes.size() >= 24) {  // half of them with a valid header start
      std::memcpy(bytes.data(), "GGUF\x03\0\0\0", 8);
      if (i % 4 == 1) {  // and small counts, so that parsing gets into the metadata
        std::memset(bytes.data() + 8, 0, 16);
        bytes[8] = static_cast<uint8_t>(rng() % 4);
        bytes[16] = static_cast<uint8_t>(rng() % 8);
      }
    }
    std::string code = ParseCode(bytes);
    EXPECT_TRUE(code == kBad || code == kUnsupported || code.empty()) << code;
  }
}

class TinyModel : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TinyModelPath();
    if (!testing::FileExists(path_)) GTEST_FAIL() << "tiny model missing at " << path_ << " (build generates it)";
    bytes_ = ReadFile(path_);
  }
  std::string path_;
  std::vector<uint8_t> bytes_;
};

TEST_F(TinyModel, Metadata) {
  auto f = GgufFile::Open(path_);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->file_size(), bytes_.size());
  EXPECT_EQ(f->Get("general.architecture").AsString(), "llama");
  EXPECT_EQ(f->Get("llama.block_count").AsUInt(), 2u);
  EXPECT_EQ(f->Get("llama.embedding_length").AsUInt(), 64u);
  EXPECT_EQ(f->Get("llama.feed_forward_length").AsUInt(), 128u);
  EXPECT_EQ(f->Get("llama.attention.head_count").AsUInt(), 4u);
  EXPECT_EQ(f->Get("llama.attention.head_count_kv").AsUInt(), 2u);
  EXPECT_EQ(f->Get("llama.context_length").AsUInt(), 256u);
  EXPECT_EQ(f->Get("llama.rope.dimension_count").AsUInt(), 16u);
  EXPECT_EQ(f->Get("llama.vocab_size").AsUInt(), 300u);
  EXPECT_FLOAT_EQ(static_cast<float>(f->Get("llama.rope.freq_base").AsFloat()), 10000.0f);
  EXPECT_FLOAT_EQ(static_cast<float>(f->Get("llama.attention.layer_norm_rms_epsilon").AsFloat()), 1e-5f);
  EXPECT_EQ(f->Get("tokenizer.ggml.model").AsString(), "gpt2");
  const auto& tokens = f->Get("tokenizer.ggml.tokens").Strings();
  ASSERT_EQ(tokens.size(), 300u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[1], "<|im_start|>");
  EXPECT_EQ(tokens[2], "<|im_end|>");
  EXPECT_EQ(tokens[3 + 'a'], "a");
  EXPECT_EQ(tokens[3 + ' '], "\xC4\xA0");  // GPT-2's byte-level space, U+0120
  auto types = f->Get("tokenizer.ggml.token_type").Ints();
  ASSERT_EQ(types.size(), 300u);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[100], 1);
  const auto& merges = f->Get("tokenizer.ggml.merges").Strings();
  EXPECT_EQ(merges.size(), 300u - 3 - 256);
  std::set<std::string_view> vocab(tokens.begin(), tokens.end());
  for (std::string_view m : merges) {  // every merge is "a b" with a, b and ab in the vocabulary
    size_t sp = m.find(' ');
    ASSERT_NE(sp, std::string_view::npos) << m;
    std::string joined = std::string(m.substr(0, sp)) + std::string(m.substr(sp + 1));
    EXPECT_TRUE(vocab.count(m.substr(0, sp)) && vocab.count(m.substr(sp + 1)) && vocab.count(joined)) << m;
  }
  EXPECT_EQ(f->Get("tokenizer.ggml.bos_token_id").AsUInt(), 1u);
  EXPECT_EQ(f->Get("tokenizer.ggml.eos_token_id").AsUInt(), 2u);
  EXPECT_NE(f->Get("tokenizer.chat_template").AsString().find("<|im_start|>"), std::string_view::npos);
}

TEST_F(TinyModel, Tensors) {
  auto f = GgufFile::Open(path_);
  ASSERT_EQ(f->tensors().size(), 2u + 2 * 9 + 1);
  std::set<GgmlType> types;
  for (const GgufTensor& t : f->tensors()) {
    types.insert(t.type);
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
  }
  EXPECT_EQ(types, (std::set<GgmlType>{GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1}));
  const GgufTensor& emb = f->GetTensor("token_embd.weight");
  EXPECT_EQ(emb.type, GgmlType::F16);
  EXPECT_EQ(emb.ShapeString(), "[64, 300]");
  EXPECT_EQ(f->GetTensor("blk.0.attn_k.weight").ShapeString(), "[64, 32]");
  EXPECT_EQ(f->GetTensor("blk.1.ffn_down.weight").ShapeString(), "[128, 64]");
  EXPECT_EQ(f->GetTensor("blk.0.ffn_gate.weight").type, GgmlType::Q4_0);
  EXPECT_EQ(f->GetTensor("blk.1.attn_q.weight").type, GgmlType::Q4_1);
  EXPECT_EQ(f->GetTensor("output.weight").type, GgmlType::Q8_0);

  // Weights are what the generator promised: finite, norms near 1, matrices within the uniform bound
  // sqrt(3 / n_in) (plus quantisation error).
  std::vector<float> row;
  for (const GgufTensor& t : f->tensors()) {
    row.resize(t.row_length());
    double bound = t.name.find("norm") != std::string_view::npos ? 1.1
                   : t.name == "token_embd.weight"             ? 1.0
                                                               : std::sqrt(3.0 / static_cast<double>(t.row_length()));
    double max_abs = 0;
    for (uint64_t r = 0; r < t.rows(); ++r) {
      DequantizeRow(t, r, row.data());
      for (float v : row) {
        ASSERT_TRUE(std::isfinite(v)) << t.name;
        max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
        if (t.name.find("norm") != std::string_view::npos) {
          EXPECT_GT(v, 0.89f) << t.name;
        }
      }
    }
    EXPECT_LE(max_abs, bound * 1.07) << t.name;
    EXPECT_GE(max_abs, bound * 0.8) << t.name;
  }
}

TEST_F(TinyModel, TruncatedAtEveryLength) {
  auto whole = GgufFile::Parse(bytes_.data(), bytes_.size());
  uint64_t needed = 0;  // bytes up to the end of the last tensor's data; trailing padding is optional
  for (const GgufTensor& t : whole->tensors()) needed = std::max(needed, whole->data_offset() + t.offset + t.n_bytes);
  ASSERT_LE(needed, bytes_.size());
  std::vector<uint8_t> prefix;
  auto check = [&](size_t len) {
    prefix.assign(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(len));
    EXPECT_EQ(ParseCode(prefix), len < needed ? kBad : "") << "length " << len;
  };
  // Every length through the header, metadata, tensor infos and the first data bytes; then a stride.
  size_t dense = static_cast<size_t>(whole->data_offset()) + 512;
  for (size_t len = 0; len < dense; ++len) check(len);
  for (size_t len = dense; len <= bytes_.size(); len += 61) check(len);
  for (size_t len = static_cast<size_t>(needed) - 3; len <= bytes_.size(); ++len) check(len);
}

TEST_F(TinyModel, MutatedHeaders) {
  auto whole = GgufFile::Parse(bytes_.data(), bytes_.size());
  const size_t header = static_cast<size_t>(whole->data_offset());
  std::mt19937_64 rng(7);
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> m(bytes_);
    int edits = 1 + static_cast<int>(rng() % 6);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % header;
      switch (rng() % 3) {
        case 0: m[at] = static_cast<uint8_t>(rng()); break;                       // random byte
        case 1: m[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;          // bit flip
        default:                                                                   // 64-bit field
          if (at + 8 <= header) {
            uint64_t v = (rng() % 2) ? rng() : (1ull << (rng() % 64)) - (rng() % 2);
            std::memcpy(m.data() + at, &v, 8);
          }
      }
    }
    std::unique_ptr<uint8_t[]> copy(new uint8_t[m.size()]);
    std::memcpy(copy.get(), m.data(), m.size());
    std::string code = ThrownCode([&] {
      auto f = GgufFile::Parse(copy.get(), m.size());
      Exercise(*f);  // anything the parser accepted must also be safe to read
      ++parsed;
    });
    EXPECT_TRUE(code.empty() || code == kBad || code == kUnsupported) << "iteration " << i << ": " << code;
  }
  // Some mutations hit only string contents or values and still parse; most break something.
  EXPECT_GT(parsed, 0);
  EXPECT_LT(parsed, 3000);
}

TEST(RealModel, Parses) {
  std::string path = testing::RealModelPath();
  if (path.empty()) GTEST_SKIP() << "real model not fetched (npm run fetch-model)";
  auto f = GgufFile::Open(path);
  EXPECT_EQ(f->Get("general.architecture").AsString(), "llama");
  EXPECT_EQ(f->Get("llama.block_count").AsUInt(), 30u);
  EXPECT_EQ(f->Get("llama.embedding_length").AsUInt(), 576u);
  EXPECT_EQ(f->Get("llama.feed_forward_length").AsUInt(), 1536u);
  EXPECT_EQ(f->Get("llama.attention.head_count").AsUInt(), 9u);
  EXPECT_EQ(f->Get("llama.attention.head_count_kv").AsUInt(), 3u);
  EXPECT_EQ(f->Get("tokenizer.ggml.tokens").Strings().size(), 49152u);
  EXPECT_EQ(f->tensors().size(), 272u);
  std::set<GgmlType> types;
  for (const GgufTensor& t : f->tensors()) types.insert(t.type);
  EXPECT_EQ(types, (std::set<GgmlType>{GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1}));
  EXPECT_EQ(f->GetTensor("token_embd.weight").ShapeString(), "[576, 49152]");
  EXPECT_EQ(f->FindTensor("output.weight"), nullptr);  // tied to token_embd

  // Every row of every tensor dequantizes to finite values.
  std::vector<float> row;
  for (const GgufTensor& t : f->tensors()) {
    row.resize(t.row_length());
    for (uint64_t r = 0; r < t.rows(); ++r) {
      DequantizeRow(t, r, row.data());
      for (float v : row) ASSERT_TRUE(std::isfinite(v)) << t.name << " row " << r;
    }
  }

  // Truncations of the real file (parsed in place from the mapping, shorter lengths).
  const uint8_t* base = f->tensors().front().data - f->data_offset() - f->tensors().front().offset;
  uint64_t needed = 0;
  for (const GgufTensor& t : f->tensors()) needed = std::max(needed, f->data_offset() + t.offset + t.n_bytes);
  for (size_t len : {size_t{0}, size_t{24}, size_t{1000}, size_t{100000}, size_t{1000000},
                     static_cast<size_t>(f->data_offset()), static_cast<size_t>(needed) - 1})
    EXPECT_EQ(ThrownCode([&] { GgufFile::Parse(base, len); }), kBad) << "length " << len;
}

}  // namespace
}  // namespace kvf::engine
