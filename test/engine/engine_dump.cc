// Command-line window onto the engine's GGUF loader and dequantization, for inspection and for the
// gguf-py crosscheck (benchmarks/crosscheck):
//   engine_dump info <model.gguf>                                   JSON: header, metadata, tensors
//   engine_dump rows <model.gguf> <tensor> <row> <count> <out.f32>  dequantized rows, float32 LE
//   engine_dump dot  <model.gguf> <tensor> <row> <count> <x.f32> <out.f32>
//                                                                   DotRow(row_i, x) for each row
// Errors print "CODE: message" on stderr and exit 1.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/dequant.h"
#include "engine/gguf.h"

using namespace kvf::engine;

namespace {

std::string Json(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string Number(double v) {
  std::ostringstream o;
  o.precision(17);
  o << v;
  return o.str();
}

std::string ScalarJson(const GgufValue& v) {
  switch (v.type()) {
    case GgufType::STRING: return Json(v.AsString());
    case GgufType::BOOL: return v.AsBool() ? "true" : "false";
    case GgufType::FLOAT32:
    case GgufType::FLOAT64: return Number(v.AsFloat());
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64: return std::to_string(v.AsInt());
    default: return std::to_string(v.AsUInt());
  }
}

void Info(const GgufFile& f) {
  std::ostream& o = std::cout;
  o << "{\n  \"version\": " << f.version() << ",\n  \"alignment\": " << f.alignment()
    << ",\n  \"data_offset\": " << f.data_offset() << ",\n  \"file_size\": " << f.file_size() << ",\n  \"metadata\": [";
  bool first = true;
  for (const auto& [key, v] : f.metadata()) {
    o << (first ? "\n" : ",\n") << "    {\"key\": " << Json(key) << ", ";
    first = false;
    if (v.is_array()) {
      o << "\"type\": \"array\", \"array_type\": \"" << GgufTypeName(v.array_type()) << "\", \"length\": " << v.size()
        << ", \"head\": [";
      const uint64_t n = v.size() < 8 ? v.size() : 8;
      for (uint64_t i = 0; i < n; ++i) {
        if (i) o << ", ";
        if (v.array_type() == GgufType::STRING) o << Json(v.Strings()[i]);
        else if (v.array_type() == GgufType::FLOAT32 || v.array_type() == GgufType::FLOAT64) o << Number(v.FloatAt(i));
        else o << v.IntAt(i);
      }
      o << "]}";
    } else {
      o << "\"type\": \"" << GgufTypeName(v.type()) << "\", \"value\": " << ScalarJson(v) << "}";
    }
  }
  o << "\n  ],\n  \"tensors\": [";
  first = true;
  for (const GgufTensor& t : f.tensors()) {
    o << (first ? "\n" : ",\n") << "    {\"name\": " << Json(t.name) << ", \"type\": \"" << TypeName(t.type)
      << "\", \"shape\": [";
    first = false;
    for (uint32_t d = 0; d < t.n_dims; ++d) o << (d ? ", " : "") << t.ne[d];
    o << "], \"offset\": " << t.offset << ", \"n_bytes\": " << t.n_bytes << "}";
  }
  o << "\n  ]\n}\n";
}

std::vector<float> ReadFloats(const char* path) {
  FILE* fp = std::fopen(path, "rb");
  if (!fp) throw kvf::Error("KVF_ERR_INVALID_ARGUMENT", std::string("cannot open ") + path);
  std::vector<float> v;
  float buf[1024];
  size_t n;
  while ((n = std::fread(buf, 4, 1024, fp)) > 0) v.insert(v.end(), buf, buf + n);
  std::fclose(fp);
  return v;
}

void WriteFloats(const char* path, const std::vector<float>& v) {
  FILE* fp = std::fopen(path, "wb");
  if (!fp || std::fwrite(v.data(), 4, v.size(), fp) != v.size())
    throw kvf::Error("KVF_ERR_INVALID_ARGUMENT", std::string("cannot write ") + path);
  std::fclose(fp);
}

int Usage() {
  std::cerr << "usage: engine_dump info <model.gguf>\n"
               "       engine_dump rows <model.gguf> <tensor> <row> <count> <out.f32>\n"
               "       engine_dump dot <model.gguf> <tensor> <row> <count> <x.f32> <out.f32>\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string cmd = argv[1];
  try {
    GgufOptions lenient;
    lenient.require_dequantizable = false;  // list everything; dequantizing an unsupported type still fails
    auto f = GgufFile::Open(argv[2], lenient);
    if (cmd == "info" && argc == 3) {
      Info(*f);
      return 0;
    }
    if ((cmd == "rows" && argc == 7) || (cmd == "dot" && argc == 8)) {
      const GgufTensor& t = f->GetTensor(argv[3]);
      const uint64_t first = std::strtoull(argv[4], nullptr, 10);
      const uint64_t count = std::strtoull(argv[5], nullptr, 10);
      const size_t n = static_cast<size_t>(t.row_length());
      std::vector<float> out;
      if (cmd == "rows") {
        out.resize(count * n);
        for (uint64_t i = 0; i < count; ++i) DequantizeRow(t, first + i, out.data() + i * n);
        WriteFloats(argv[6], out);
      } else {
        std::vector<float> x = ReadFloats(argv[6]);
        if (x.size() != n)
          throw kvf::Error("KVF_ERR_INVALID_ARGUMENT",
                           "x has " + std::to_string(x.size()) + " floats, rows have " + std::to_string(n));
        for (uint64_t i = 0; i < count; ++i) out.push_back(DotRow(t, first + i, x.data()));
        WriteFloats(argv[7], out);
      }
      return 0;
    }
    return Usage();
  } catch (const kvf::Error& e) {
    std::cerr << e.code() << ": " << e.what() << "\n";
    return 1;
  }
}
