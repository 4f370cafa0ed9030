// pybind11 module boss_fast._C: boundary checks, then the kernel with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "bellman_dp.h"

namespace py = pybind11;

namespace {

py::tuple bellman_table(py::array_t<double, py::array::c_style | py::array::forcecast> cost, int64_t max_steps,
                        double discount, int threads, const std::string& isa) {
  boss_fast::Isa path;
  if (isa == "auto") {
    path = boss_fast::Isa::kAuto;
  } else if (isa == "avx512") {
    path = boss_fast::Isa::kAvx512;
  } else if (isa == "avx2") {
    path = boss_fast::Isa::kAvx2;
  } else if (isa == "scalar") {
    path = boss_fast::Isa::kScalar;
  } else {
    throw py::value_error("isa must be 'auto', 'avx512', 'avx2' or 'scalar', got '" + isa + "'");
  }
  if (cost.ndim() != 2 || cost.shape(0) != cost.shape(1)) {
    throw py::value_error("cost must be a square 2-D array");
  }
  const int64_t n = cost.shape(0);
  if (n < 2) throw py::value_error("cost must have at least 2 grid points, got " + std::to_string(n));
  if (max_steps < 1 || max_steps > n - 1) {
    throw py::value_error("max_steps must be in [1, " + std::to_string(n - 1) + "], got " +
                          std::to_string(max_steps));
  }
  if (!(discount > 0.0) || !std::isfinite(discount)) {
    throw py::value_error("discount must be a finite number > 0");
  }
  py::array_t<double> value({max_steps + 1, n});
  py::array_t<int64_t> next({max_steps + 1, n});
  const double* c = cost.data();
  double* v = value.mutable_data();
  int64_t* nx = next.mutable_data();
  int64_t bad_row;
  {
    py::gil_scoped_release release;
    bad_row = boss_fast::bellman_table(c, n, max_steps, discount, v, nx, threads, path);
  }
  if (bad_row == -2) throw std::runtime_error("this CPU cannot run the '" + isa + "' path");
  return py::make_tuple(value, next, bad_row);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "boss_fast C++ kernels (no torch dependency)";
  m.def("bellman_table", &bellman_table, py::arg("cost"), py::arg("max_steps"), py::arg("discount") = 1.0, py::arg("threads") = 0, py::arg("isa") = "auto",
        "Bellman table for every budget 1..max_steps: (value (K+1, N), next (K+1, N), bad_row).");
#ifdef BOSS_FAST_VERSION
  m.attr("__version__") = BOSS_FAST_VERSION;
#endif
}
