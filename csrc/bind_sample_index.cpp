// Thin pybind11 binding of sample_index.h: arrays in, new arrays out, the GIL released while the
// C++ runs. Validation and the int32/int64 choice live in chatflow/data/sample_index.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "sample_index.h"

namespace py = pybind11;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
Array<T> document_index(const Array<T>& doc_ids, int64_t num_epochs, uint64_t seed) {
  const int64_t n = doc_ids.size();
  Array<T> out(n * num_epochs);
  const T* in = doc_ids.data();
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    chatflow::build_document_index<T>(in, n, num_epochs, seed, dst);
  }
  return out;
}

template <typename T>
Array<T> sample_index(const Array<int32_t>& sizes, const Array<T>& doc_index, int64_t seq_length,
                      int64_t num_samples, int64_t add_extra_token) {
  Array<T> out({num_samples + 1, static_cast<int64_t>(2)});
  const int32_t* s = sizes.data();
  const T* d = doc_index.data();
  const int64_t len = doc_index.size();
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    chatflow::build_sample_index<T>(s, d, len, seq_length, num_samples, add_extra_token, dst);
  }
  return out;
}

template <typename T>
Array<T> shuffle_index(int64_t num_blocks, int64_t block, uint64_t seed) {
  Array<T> out(num_blocks * block);
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    chatflow::build_shuffle_index<T>(num_blocks, block, seed, dst);
  }
  return out;
}

template <typename T>
Array<T> shuffled(const Array<T>& values, uint64_t seed, uint64_t stream, uint64_t index) {
  const int64_t n = values.size();
  Array<T> out(n);
  const T* in = values.data();
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) dst[i] = in[i];
    chatflow::shuffle_in_place<T>(dst, n, seed, stream, index);
  }
  return out;
}

template <typename T>
void bind_typed(py::module_& m, const std::string& suffix) {
  m.def(("shuffled_" + suffix).c_str(), &shuffled<T>, py::arg("values"), py::arg("seed"),
        py::arg("stream"), py::arg("index"),
        "A copy of values, Fisher-Yates shuffled with generator (seed, stream, index).");
  m.def(("build_document_index_" + suffix).c_str(), &document_index<T>, py::arg("doc_ids"),
        py::arg("num_epochs"), py::arg("seed"),
        "Each epoch a SplitMix64 Fisher-Yates shuffle of doc_ids (stream 1, index = epoch).");
  m.def(("build_sample_index_" + suffix).c_str(), &sample_index<T>, py::arg("sizes"),
        py::arg("doc_index"), py::arg("seq_length"), py::arg("num_samples"),
        py::arg("add_extra_token"),
        "[num_samples + 1, 2] rows (doc_index position, token offset), Megatron's layout.");
  m.def(("build_shuffle_index_" + suffix).c_str(), &shuffle_index<T>, py::arg("num_blocks"),
        py::arg("block"), py::arg("seed"),
        "Identity of num_blocks * block shuffled within blocks (stream 2, index = block).");
}

}  // namespace

void bind_sample_index(py::module_& m) {
  bind_typed<int32_t>(m, "int32");
  bind_typed<int64_t>(m, "int64");
  m.def(
      "splitmix64_stream",
      [](uint64_t seed, uint64_t stream, uint64_t index, int64_t count) {
        // Raw generator output, for the Python reference to check its mirror of the RNG.
        py::array_t<uint64_t> out(count);
        chatflow::SplitMix64 rng{chatflow::derive_state(seed, stream, index)};
        uint64_t* dst = out.mutable_data();
        for (int64_t i = 0; i < count; ++i) dst[i] = rng.next();
        return out;
      },
      py::arg("seed"), py::arg("stream"), py::arg("index"), py::arg("count"));
}
