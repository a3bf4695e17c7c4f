# sandlot: top-level entry points. Every target installs its own dependencies first (tools/setup).
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
CMAKE_FLAGS ?=
# One line when a long step starts and ends (UTC), so a slow `make test` shows where its time went.
stamp = @echo "== $(1) $$(date -u +%T)"

.PHONY: all setup build build-asan images demo test test-unit test-vm bench-boot bench-exec bench-fs bench-storage bench-lifecycle bench-pull fuzz asan \
	format clean

all: build

setup:
	@tools/setup

build: setup
	$(call stamp,build $(BUILD) started)
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)
	$(call stamp,build $(BUILD) done)

build-asan: setup
	$(call stamp,build build-asan started)
	@cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DSANDLOT_SANITIZE=ON >/dev/null
	@cmake --build build-asan
	$(call stamp,build build-asan done)

# The built-in root images debian and python (debootstrap from the Debian mirror; cached, minutes the first time).
images: build
	@cmake --build $(BUILD) --target guest-images
	$(call stamp,images ready)

# Boots a sandbox with our VMM and talks to its agent over vsock (inside the nested rig on PVM hosts).
demo: build
	@tools/demo $(BUILD)

# Unit tests on the host, then the VM suite (directly on hardware KVM, in the nested rig on PVM hosts), for the
# normal build and for the AddressSanitizer + UndefinedBehaviorSanitizer build.
test: build build-asan images
	@tools/test $(BUILD) build-asan
	$(call stamp,tests done)

test-unit: build
	@tools/test --unit-only $(BUILD)

test-vm: build images
	@tools/test --vm-only $(BUILD)

# Boot time against QEMU microvm on the same kernel and initramfs, and the VMM's own memory overhead.
bench-boot: build
	@benchmarks/boot/run $(BUILD)

# Exec round trip and output throughput through agentd against native, first with agentd as a host process,
# then in a sandbox (directly on hardware KVM, in the nested rig on PVM hosts).
bench-exec: build
	@benchmarks/exec/run $(BUILD)

# Copies into and out of a sandbox through the guest filesystem API (a 1 GiB file, a tree of 10,000 4 KiB
# files) against host cp / cp -r and against piping the file through exec; first with agentd as a host process,
# then in a sandbox (directly on hardware KVM, in the nested rig on PVM hosts).
bench-fs: build
	@benchmarks/fs/run $(BUILD)

# File I/O through virtio-blk and virtio-fs in a sandbox against the host file system (and virtio-blk against
# QEMU's), boot time with the base and debian images; host part first, then the VM part (directly on hardware
# KVM, in the nested rig on PVM hosts). One line per figure: name sandlot=<x> host=<y> ratio=<x/y>.
bench-storage: build
	@benchmarks/storage/run $(BUILD)

# What named sandboxes cost: start/stop through the supervisor against an in-process boot, exec into a running
# sandbox against the CLI's own start-up and native /bin/true (directly on hardware KVM, in the rig on PVM hosts).
bench-lifecycle: build
	@benchmarks/lifecycle/run $(BUILD)

# Cold pull + prepare of the debian image from a local registry against skopeo copy of it, and warm start from
# the prepared image against the built-in debian image: pull_s sandlot=<s> skopeo=<s> ratio=, warm_start_ms=.
bench-pull: build
	@benchmarks/pull/run $(BUILD)

# The wire codec's libFuzzer target (clang-16, ASan + UBSan) for a longer run than the one in `make test`.
FUZZ_TIME ?= 120
fuzz: setup
	@tools/fuzz --time $(FUZZ_TIME)

# Only the AddressSanitizer + UndefinedBehaviorSanitizer build and its tests.
asan: build-asan
	@tools/test build-asan

format:
	@git ls-files '*.cpp' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) build-asan
