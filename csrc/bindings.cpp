// pybind11 entry point of chatflow._C. Each concern binds itself from its own bind_*.cpp file so
// that the C++ logic files stay free of Python.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_blending(py::module_& m);
void bind_sample_index(py::module_& m);
void bind_packing(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "ChatFlow C++ index builders (blending, per-source sample indices, packing)";
  bind_blending(m);
  bind_sample_index(m);
  bind_packing(m);
}
