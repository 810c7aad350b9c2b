// Placeholder: filled by the blending work.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_blending(py::module_& m) { (void)m; }
