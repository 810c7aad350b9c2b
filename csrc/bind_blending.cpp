// pybind11 binding of the blending builders: numpy in, numpy out, GIL released while building.
// Inputs are validated by chatflow/data/blending.py; the shape checks here only guard memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

#include "blending.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

using Builder = std::function<void(const chatflow::SegmentTable&, int64_t, int64_t,
                                   const int64_t*, const double*, int16_t*, int64_t*)>;

void check_size(const py::array& x, int64_t expected, const char* name) {
  if (x.size() != expected) {
    throw std::invalid_argument(std::string("blending: ") + name + " has " +
                                std::to_string(x.size()) + " elements, expected " +
                                std::to_string(expected));
  }
}

template <typename T>
py::array_t<T> checked_output(const py::object& obj, int64_t n) {
  using Out = py::array_t<T, py::array::c_style>;
  if (!py::isinstance<Out>(obj)) {
    throw std::invalid_argument("blending: output arrays must be C-contiguous numpy arrays of "
                                "int16 (dataset_index) and int64 (dataset_sample_index)");
  }
  Out arr = py::reinterpret_borrow<Out>(obj);
  if (arr.ndim() != 1 || arr.size() != n || !arr.writeable()) {
    throw std::invalid_argument("blending: output arrays must be writable, 1-D, of length " +
                                std::to_string(n));
  }
  return arr;
}

py::tuple build(const Builder& builder, CArray<double> t0, CArray<double> t1, CArray<int8_t> kind,
                CArray<double> base, CArray<double> a, CArray<double> d, int64_t start, int64_t end,
                CArray<int64_t> initial_counts, CArray<double> offset, py::object out_index,
                py::object out_sample) {
  const int64_t S = t0.size();
  const int64_t K = initial_counts.size();
  if (S < 1 || K < 1) throw std::invalid_argument("blending: need >= 1 segment and >= 1 source");
  if (start < 0 || end < start) throw std::invalid_argument("blending: need 0 <= start <= end");
  check_size(t1, S, "t1");
  check_size(kind, S, "kind");
  check_size(base, S * K, "base");
  check_size(a, S * K, "a");
  check_size(d, S * K, "d");
  check_size(offset, K, "offset");
  const chatflow::SegmentTable table{S, K, t0.data(), t1.data(), kind.data(),
                                     base.data(), a.data(), d.data()};
  // Outputs: fresh arrays, or caller-provided ones (reused buffers skip first-touch page faults).
  py::array_t<int16_t> dataset_index = out_index.is_none()
                                           ? py::array_t<int16_t>(end - start)
                                           : checked_output<int16_t>(out_index, end - start);
  py::array_t<int64_t> dataset_sample_index =
      out_sample.is_none() ? py::array_t<int64_t>(end - start)
                           : checked_output<int64_t>(out_sample, end - start);
  int16_t* di = dataset_index.mutable_data();
  int64_t* dsi = dataset_sample_index.mutable_data();
  const int64_t* counts = initial_counts.data();
  const double* off = offset.data();
  {
    py::gil_scoped_release release;
    builder(table, start, end, counts, off, di, dsi);
  }
  return py::make_tuple(std::move(dataset_index), std::move(dataset_sample_index));
}

}  // namespace

void bind_blending(py::module_& m) {
  m.attr("BLEND_ANCHOR_EVERY") = chatflow::kAnchorEvery;
  m.attr("BLEND_WINDOW") = chatflow::kWindow;
  m.def("blend_fast_fallbacks", &chatflow::fast_builder_fallbacks,
        "multi-thread fast builds rebuilt on one thread after a failed chunk check (expect 0)");
  const char* doc =
      "(t0, t1, kind, base, a, d, start, end, initial_counts, offset, out_index=None, "
      "out_sample=None) -> (int16[end-start], int64[end-start]); segment table as in "
      "csrc/blending.h; outputs are filled in place when given";
  m.def(
      "build_blending_exact",
      [](CArray<double> t0, CArray<double> t1, CArray<int8_t> kind, CArray<double> base,
         CArray<double> a, CArray<double> d, int64_t start, int64_t end,
         CArray<int64_t> initial_counts, CArray<double> offset, py::object out_index,
         py::object out_sample) {
        return build(chatflow::build_blending_exact, t0, t1, kind, base, a, d, start, end,
                     initial_counts, offset, out_index, out_sample);
      },
      py::arg("t0"), py::arg("t1"), py::arg("kind"), py::arg("base"), py::arg("a"), py::arg("d"),
      py::arg("start"), py::arg("end"), py::arg("initial_counts"), py::arg("offset"),
      py::arg("out_index") = py::none(), py::arg("out_sample") = py::none(), doc);
  m.def(
      "build_blending_fast",
      [](CArray<double> t0, CArray<double> t1, CArray<int8_t> kind, CArray<double> base,
         CArray<double> a, CArray<double> d, int64_t start, int64_t end,
         CArray<int64_t> initial_counts, CArray<double> offset, py::object out_index,
         py::object out_sample, int num_threads) {
        if (num_threads < 1) throw std::invalid_argument("blending: num_threads must be >= 1");
        auto fast = [num_threads](const chatflow::SegmentTable& t, int64_t s, int64_t e,
                                  const int64_t* c, const double* o, int16_t* di, int64_t* dsi) {
          chatflow::build_blending_fast(t, s, e, c, o, di, dsi, num_threads);
        };
        return build(fast, t0, t1, kind, base, a, d, start, end, initial_counts, offset,
                     out_index, out_sample);
      },
      py::arg("t0"), py::arg("t1"), py::arg("kind"), py::arg("base"), py::arg("a"), py::arg("d"),
      py::arg("start"), py::arg("end"), py::arg("initial_counts"), py::arg("offset"),
      py::arg("out_index") = py::none(), py::arg("out_sample") = py::none(),
      py::arg("num_threads") = 1,
      "(..., out_sample=None, num_threads=1): as build_blending_exact; num_threads > 1 builds "
      "position chunks in parallel, with output identical to num_threads=1");
}
