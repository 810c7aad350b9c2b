// Placeholder: filled by the sample_index work.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_sample_index(py::module_& m) { (void)m; }
