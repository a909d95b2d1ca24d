# camotrain build. `make` | `make CUDA=0` | `make CUDA=emu` | `make test [SAN=1|TSAN=1]` | `make demo` |
# `make bench` | `make check-layers` | `make ONNX=0` (without `camotrain export`)
# Flags verified in ../shared/BUILD-NOTES.md (libconfig 1.5, old stb, OpenBLAS pthread, CUDA 13).

CC       ?= gcc
CUDA_HOME ?= /usr/local/cuda
# cuDNN and NCCL from elsewhere (a GPU machine's PyTorch wheels: ../shared/tools/device-deps.sh
# exports both); searched before $(CUDA_HOME), and their lib folders are the binaries' rpath
CUDNN_HOME ?=
NCCL_HOME ?=
NVCC     ?= $(CUDA_HOME)/bin/nvcc
# CUDA is built when nvcc is found, unless CUDA=0
CUDA     ?= $(if $(wildcard $(NVCC)),1,0)
SAN      ?= 0
TSAN     ?= 0
# sm_75 (T4), sm_80 (A100), sm_90 (H100/H200) + PTX for newer chips; narrow with CUDA_ARCH=
CUDA_ARCH ?= -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 \
             -gencode arch=compute_90,code=[sm_90,compute_90]

# Targets a user types first install missing Debian packages, then re-run make, so that
# pkg-config below is evaluated with the packages present (a fresh machine has none).
USER_GOALS := all test test-matrix demo bench bench-gpu
DEPS_GOALS := $(if $(CAMO_DEPS_OK),,$(if $(MAKECMDGOALS),$(filter $(USER_GOALS),$(MAKECMDGOALS)),all))
ifneq ($(DEPS_GOALS),)
.PHONY: $(DEPS_GOALS)
$(DEPS_GOALS):
	@tools/install_deps.sh
	@$(MAKE) --no-print-directory CAMO_DEPS_OK=1 $@
else

comma    := ,
PKGS     := libconfig openblas libcjson
# ONNX export (`camotrain export`, docs/export.md): protoc-c compiles src/nn/onnx.proto into
# $(BUILD)/gen at build time and libprotobuf-c is linked, both Debian's (tools/install_deps.sh).
# Found unless ONNX=0; without them camotrain still builds, and `export` says what is missing.
ifeq ($(origin ONNX),undefined)
  ONNX   := $(if $(and $(shell command -v protoc-c 2>/dev/null),$(shell pkg-config --exists \
              libprotobuf-c 2>/dev/null && echo 1)),1,0)
endif
ifeq ($(ONNX),1)
  PKGS   += libprotobuf-c
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) stb 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# packages unpacked under a sysroot (no dpkg, as on a GPU machine without apt): rpath too
ifneq ($(PKG_CONFIG_SYSROOT_DIR),)
  PKG_LIBS += $(patsubst -L%,-Wl$(comma)-rpath$(comma)%,$(filter -L%,$(PKG_LIBS))) \
              -Wl,-rpath,$(PKG_CONFIG_SYSROOT_DIR)/usr/lib/$(shell $(CC) -dumpmachine)
endif

CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Isrc $(PKG_CFLAGS) -MMD -MP
LDLIBS   += $(PKG_LIBS) -lpthread -lm
# MPI (docs/parallel.md "Several processes"): OpenMPI from pkg-config (ompi-c), else mpicc,
# unless MPI=0. src/core/mpi.c wraps it; without it src/core/mpi_stub.c stands in (one
# process; such a build started by mpirun as several processes refuses to run).
# .devdeps/env.sh's PKG_CONFIG_SYSROOT_DIR maps the paths of the packages unpacked under it;
# an OpenMPI installed on the machine itself (its .pc file outside the sysroot) keeps its
# real paths, or <mpi.h> would be looked for under the sysroot.
# (pkgconf's --path names the .pc file without the sysroot.)
MPI_PC_FILE := $(shell pkg-config --path ompi-c 2>/dev/null)
MPI_PKG_CONFIG := PKG_CONFIG_SYSROOT_DIR=$(if $(PKG_CONFIG_SYSROOT_DIR),$(if $(filter \
                  $(PKG_CONFIG_SYSROOT_DIR)/%,$(MPI_PC_FILE)),$(PKG_CONFIG_SYSROOT_DIR))) pkg-config
ifeq ($(origin MPI),undefined)
  MPI    := $(if $(or $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1),$(shell \
              command -v mpicc 2>/dev/null)),1,0)
endif
ifeq ($(MPI),1)
  MPI_CFLAGS := $(or $(shell $(MPI_PKG_CONFIG) --cflags ompi-c 2>/dev/null),$(shell \
                  mpicc --showme:compile))
  LDLIBS += $(or $(shell $(MPI_PKG_CONFIG) --libs ompi-c 2>/dev/null),$(shell mpicc --showme:link))
endif
OPENMP   := -fopenmp

# CUDA=emu: the cuda/ sources built with g++ against tests/cuemu (host emulation, no GPU)
ifeq ($(CUDA),emu)
  ifeq ($(SAN),1)
    BUILD ?= build-cuemu-san
  else
    BUILD ?= build-cuemu
  endif
endif

ifeq ($(SAN),1)
  BUILD  ?= build-san
  CFLAGS += -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(TSAN),1)
  # libgomp is not instrumented: TSan builds run the OpenMP loops single-threaded
  BUILD  ?= build-tsan
  OPENMP :=
  CFLAGS += -O1 -fno-omit-frame-pointer -fsanitize=thread -Wno-unknown-pragmas
  LDFLAGS += -fsanitize=thread
else
  BUILD  ?= build
endif
CFLAGS  += $(OPENMP)
LDFLAGS += $(OPENMP)

LIB_SRC  := $(filter-out src/cli/main.c,$(sort $(shell find src -name "*.c")))
CU_SRC   := $(wildcard cuda/*.cu)
ifeq ($(CUDA),1)
  CUDA_HOMES := $(CUDNN_HOME) $(NCCL_HOME) $(CUDA_HOME)
  CUDA_INC := $(foreach h,$(CUDA_HOMES),-I$(h)/include)
  CUDA_LIBDIRS := $(foreach h,$(CUDNN_HOME) $(NCCL_HOME),$(h)/lib) $(CUDA_HOME)/lib64
  CFLAGS  += -DCAMO_HAVE_CUDA=1 $(CUDA_INC)
  NVCCFLAGS ?= -O2 $(CUDA_ARCH) --threads 0 --extended-lambda -MMD -MP -Isrc $(CUDA_INC) \
               -Xcompiler -Wall,-Wextra
  # rpath: the binaries find these libraries without LD_LIBRARY_PATH
  LDLIBS  += $(foreach d,$(CUDA_LIBDIRS),-L$(d) -Wl,-rpath,$(d)) \
             -lcudnn -lcublas -lcudart -lnccl -lstdc++
  CU_OBJ  := $(CU_SRC:cuda/%.cu=$(BUILD)/cuda/%.o)
else ifeq ($(CUDA),emu)
  CFLAGS  += -DCAMO_HAVE_CUDA=1 -Itests/cuemu/include
  CUEMU_CXXFLAGS := -std=c++17 -O2 -g -Wall -Wextra -pthread -Isrc -Itests/cuemu/include \
                    -Itests/cuemu $(filter -fsanitize=% -fno-sanitize-recover=% -fno-omit-frame-pointer,$(CFLAGS))
  LDLIBS  += -lstdc++
  CU_OBJ  := $(CU_SRC:cuda/%.cu=$(BUILD)/cuda/%.o) \
             $(patsubst tests/cuemu/%.cpp,$(BUILD)/cuemu/%.o,$(wildcard tests/cuemu/*.cpp))
endif
ifeq ($(ONNX),1)
  CFLAGS   += -DCAMO_HAVE_ONNX=1 -I$(BUILD)/gen
  ONNX_OBJ := $(BUILD)/gen/nn/onnx.pb-c.o
endif
LIB_OBJ  := $(LIB_SRC:src/%.c=$(BUILD)/src/%.o) $(CU_OBJ) $(ONNX_OBJ)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard tools/bench_*.c)
BENCH_BIN := $(BENCH_SRC:tools/%.c=$(BUILD)/tools/%)
BIN      := $(BUILD)/camotrain

.PHONY: all test demo bench clean
all: $(BIN) camotrain

# the user-facing binary sits at the root; sanitizer builds keep theirs in their build dir
camotrain: $(BIN)
	@if [ "$(BUILD)" = build ]; then cp $(BIN) camotrain; fi

$(BUILD)/libcamo.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BIN): $(BUILD)/src/cli/main.o $(BUILD)/libcamo.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/src/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

# stb's implementation is slow to compile and noisy under stricter warnings: its own unit
$(BUILD)/src/data/stb_impl.o: CFLAGS += -Wno-unused-function

# MPI: only src/core/mpi.c (and its stub, which steps aside) see <mpi.h> and the switch
ifeq ($(MPI),1)
$(BUILD)/src/core/mpi.o $(BUILD)/src/core/mpi_stub.o: CFLAGS += -DCAMO_HAVE_MPI=1 $(MPI_CFLAGS)
endif

ifeq ($(ONNX),1)
# protobuf-c code from the ONNX schema (one pattern rule: both files from one protoc-c run)
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: src/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=src --c_out=$(BUILD)/gen $<

$(ONNX_OBJ): $(BUILD)/gen/nn/onnx.pb-c.c $(BUILD)/gen/nn/onnx.pb-c.h
	$(CC) $(CFLAGS) -c $< -o $@

# what includes the generated header waits for it
$(BUILD)/src/nn/onnx_export.o $(BUILD)/tests/test_onnx: $(BUILD)/gen/nn/onnx.pb-c.h
endif

ifeq ($(CUDA),emu)
# preprocess, turn each <<<...>>> launch into a cuemu::launch call, compile for the host
$(BUILD)/cuda/%.o: cuda/%.cu tests/cuemu/launch.pl
	@mkdir -p $(@D)
	$(CXX) $(CUEMU_CXXFLAGS) -x c++ -E -MMD -MP -MT $@ -MF $(BUILD)/cuda/$*.d $< \
	    | perl tests/cuemu/launch.pl > $(BUILD)/cuda/$*.ii
	$(CXX) $(CUEMU_CXXFLAGS) -x c++-cpp-output -c $(BUILD)/cuda/$*.ii -o $@

$(BUILD)/cuemu/%.o: tests/cuemu/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CUEMU_CXXFLAGS) -MMD -MP -c $< -o $@
else
$(BUILD)/cuda/%.o: cuda/%.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
endif

$(BUILD)/tests/%: tests/%.c tests/test_util.h $(BUILD)/libcamo.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests $(LDFLAGS) -o $@ $< $(BUILD)/libcamo.a $(LDLIBS) -lcmocka

$(BUILD)/tools/%: tools/%.c $(BUILD)/libcamo.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcamo.a $(LDLIBS)

# `make test` also builds the cuemu variant (CUDA=emu, tests/cuemu: the cuda/ sources on a
# host emulation of the GPU) for tests/test_gpu_paths.sh, so machines without a GPU run the
# CUDA backend's code too; not under TSAN=1 (fibers and ThreadSanitizer do not mix).
ifeq ($(CUDA),emu)
CUEMU_BUILD := $(BUILD)
cuemu-bins: $(BIN) $(BUILD)/tests/test_cuda_parity $(BUILD)/tests/test_parallel $(BUILD)/tests/test_moe \
            $(BUILD)/tools/test_multi_gpu $(BUILD)/tests/test_nccl_mpi
else ifneq ($(TSAN),1)
CUEMU_BUILD := $(if $(filter 1,$(SAN)),build-cuemu-san,build-cuemu)
cuemu-bins:
	@$(MAKE) --no-print-directory CUDA=emu SAN=$(SAN) CAMO_DEPS_OK=1 cuemu-bins
endif
.PHONY: cuemu-bins

test: $(BIN) camotrain tools/test_multi_gpu $(TEST_BIN) $(if $(CUEMU_BUILD),cuemu-bins)
	@BUILD=$(BUILD) CAMOTRAIN=$(BIN) CUEMU_BUILD=$(CUEMU_BUILD) tests/run.sh

# the include rule of src/ and cuda/ (README "Layout"; tests/test_layers.sh runs it in make test)
.PHONY: check-layers
check-layers:
	@tools/check_layers.sh .

# the numerical suites under every OpenBLAS kernel, cache size and 2 threads
# (tests/test_blas_matrix.sh; `make test` runs it under one other kernel)
.PHONY: test-matrix
test-matrix: $(BIN) camotrain $(TEST_BIN) $(if $(CUEMU_BUILD),cuemu-bins)
	@BUILD=$(BUILD) CAMOTRAIN=$(BIN) CUEMU_BUILD=$(CUEMU_BUILD) CAMO_MATRIX=all \
	    CAMO_RUN_ONLY=tests/test_blas_matrix.sh tests/run.sh

demo: $(BIN) camotrain tools/test_multi_gpu
	@CAMOTRAIN=$(BIN) tools/demo.sh

bench: $(BIN) camotrain $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b || exit 1; done
	@CAMOTRAIN=$(BIN) tools/bench_cpu_models.sh
	@CAMOTRAIN=$(BIN) tools/bench_memory.sh

# GPU tools (docs/cuda.md): tools/test_multi_gpu is built by `make` in every build (without
# CUDA it says so and exits 2); `make bench-gpu` trains unet_s and fpn_r18 at 320x320 with
# camotrain and with PyTorch in the same run (tools/bench_gpu.sh).
MGPU_BIN := $(BUILD)/tools/test_multi_gpu
all: $(MGPU_BIN) tools/test_multi_gpu
tools/test_multi_gpu: $(MGPU_BIN)
	@if [ "$(BUILD)" = build ]; then cp $(MGPU_BIN) tools/test_multi_gpu; fi
.PHONY: bench-gpu
bench-gpu: $(BIN) camotrain
	@CAMOTRAIN=$(BIN) tools/bench_gpu.sh

clean:
	rm -rf build build-* camotrain tools/test_multi_gpu

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
endif
