// Runs a library built by lightir for another CPU (aarch64) under qemu-user, so its outputs
// can be compared with onnxruntime on this machine. Built by lightir.lowering.emulation with
// the target's cross compiler, against the TVM runtime of that architecture's TVM wheel.
//
//   runner LIB.so OUT_PREFIX [IN.bin DTYPE_CODE DTYPE_BITS NDIM D0 D1 ...]...
//
// Inputs are raw little-endian arrays. Output i goes to OUT_PREFIX.i.bin, and one line
// "i CODE BITS NDIM D0 D1 ..." per output is printed on stdout.
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

struct CPUAlloc {
  void AllocData(DLTensor* tensor) { tensor->data = std::malloc(ffi::GetDataSize(*tensor)); }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

static ffi::Tensor ReadInput(const std::string& path, DLDataType dtype,
                             const std::vector<int64_t>& shape) {
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                dtype, DLDevice{kDLCPU, 0});
  size_t size = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  std::ifstream in(path, std::ios::binary);
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(size));
  if (static_cast<size_t>(in.gcount()) != size) {
    std::cerr << "runner: " << path << " holds fewer than " << size << " bytes\n";
    std::exit(2);
  }
  return tensor;
}

static void WriteOutput(const std::string& prefix, int index, const ffi::Tensor& tensor) {
  const DLTensor* dl = tensor.GetDLTensorPtr();
  std::ofstream out(prefix + "." + std::to_string(index) + ".bin", std::ios::binary);
  out.write(static_cast<const char*>(dl->data), static_cast<std::streamsize>(ffi::GetDataSize(*dl)));
  std::cout << index << " " << int(dl->dtype.code) << " " << int(dl->dtype.bits) << " " << dl->ndim;
  for (int i = 0; i < dl->ndim; ++i) std::cout << " " << dl->shape[i];
  std::cout << "\n";
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: runner LIB.so OUT_PREFIX [IN.bin CODE BITS NDIM DIMS...]...\n";
    return 2;
  }
  std::vector<ffi::Any> args;
  for (int i = 3; i < argc;) {
    std::string path = argv[i++];
    DLDataType dtype{static_cast<uint8_t>(std::atoi(argv[i])),
                     static_cast<uint8_t>(std::atoi(argv[i + 1])), 1};
    int ndim = std::atoi(argv[i + 2]);
    i += 3;
    std::vector<int64_t> shape;
    for (int d = 0; d < ndim; ++d) shape.push_back(std::atoll(argv[i++]));
    args.emplace_back(ReadInput(path, dtype, shape));
  }
  ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // CPU, device 0, pooled allocator (2): what relax.VirtualMachine(lib, tvm.cpu()) does.
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  ffi::Any result;
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
  if (auto tensor = result.as<ffi::Tensor>()) {
    WriteOutput(argv[2], 0, *tensor);
  } else {
    auto outputs = result.cast<ffi::Array<ffi::Any>>();
    for (size_t i = 0; i < outputs.size(); ++i) {
      WriteOutput(argv[2], static_cast<int>(i), outputs[i].cast<ffi::Tensor>());
    }
  }
  return 0;
}
