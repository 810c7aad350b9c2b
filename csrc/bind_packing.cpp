// Thin pybind11 binding of packing.h: arrays in, a dict of new arrays out, the GIL released while
// the C++ runs. Validation lives in chatflow/data/packing.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "packing.h"

namespace py = pybind11;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
Array<T> to_array(const std::vector<T>& v) {
  Array<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

template <typename T>
py::dict packing(const Array<int32_t>& sizes, const Array<T>& doc_ids,
                 const Array<int64_t>& split_offsets, const Array<int32_t>& split_points,
                 int64_t capacity, int64_t min_bins, uint64_t seed, bool chunk_long_turns) {
  if (split_offsets.size() != sizes.size() + 1) {
    throw std::invalid_argument("build_packing: split_offsets must have len(sizes) + 1 entries");
  }
  const int64_t num_sequences = sizes.size();
  for (int64_t i = 0; i < doc_ids.size(); ++i) {
    const int64_t d = static_cast<int64_t>(doc_ids.data()[i]);
    if (d < 0 || d >= num_sequences) {
      throw std::invalid_argument("build_packing: doc id " + std::to_string(d) + " outside [0, " +
                                  std::to_string(num_sequences) + ")");
    }
  }
  if (split_offsets.data()[0] != 0 || split_offsets.data()[num_sequences] != split_points.size()) {
    throw std::invalid_argument("build_packing: split_offsets must run from 0 to len(points)");
  }
  chatflow::PackingResult r;
  {
    py::gil_scoped_release release;
    r = chatflow::build_packing<T>(sizes.data(), num_sequences, doc_ids.data(), doc_ids.size(),
                                   split_offsets.data(), split_points.data(), capacity, min_bins,
                                   seed, chunk_long_turns);
  }
  py::dict out;
  out["bin_offsets"] = to_array(r.bin_offsets);
  std::vector<T> docs(r.piece_doc.begin(), r.piece_doc.end());
  out["piece_doc"] = to_array(docs);
  out["piece_start"] = to_array(r.piece_start);
  out["piece_len"] = to_array(r.piece_len);
  out["epoch_bins"] = to_array(r.epoch_bins);
  Array<int64_t> stats({static_cast<py::ssize_t>(r.epoch_bins.size() - 1),
                        static_cast<py::ssize_t>(chatflow::kNumStats)});
  std::copy(r.stats.begin(), r.stats.end(), stats.mutable_data());
  out["epoch_stats"] = stats;
  return out;
}

}  // namespace

void bind_packing(py::module_& m) {
  const char* doc =
      "Conversation packing (csrc/packing.h): dict of bin_offsets, piece_doc, piece_start, "
      "piece_len, epoch_bins, epoch_stats [epochs, 4] (splits, truncations, dropped, tokens).";
  m.def("build_packing_int32", &packing<int32_t>, py::arg("sizes"), py::arg("doc_ids"),
        py::arg("split_offsets"), py::arg("split_points"), py::arg("capacity"),
        py::arg("min_bins"), py::arg("seed"), py::arg("chunk_long_turns"), doc);
  m.def("build_packing_int64", &packing<int64_t>, py::arg("sizes"), py::arg("doc_ids"),
        py::arg("split_offsets"), py::arg("split_points"), py::arg("capacity"),
        py::arg("min_bins"), py::arg("seed"), py::arg("chunk_long_turns"), doc);
}
