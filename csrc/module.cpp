// The Python module lcmat._C. Importing it loads this library, whose static initialisers register
// the ops under torch.ops.lcmat: each kernel family's schemas (TORCH_LIBRARY_FRAGMENT) and CPU and
// CUDA implementations (TORCH_LIBRARY_IMPL) live in its own csrc/<family>.cpp. WITH_CUDA says
// whether the CUDA kernels were compiled in.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "lcmat's compiled kernels (torch.ops.lcmat)", -1,
                               nullptr};
  PyObject* mod = PyModule_Create(&module);
  if (mod == nullptr) return nullptr;
#ifdef WITH_CUDA
  PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
#endif
  return mod;
}
