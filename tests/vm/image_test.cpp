// OCI images end to end in real microVMs: an image imported from a docker-archive (tools/build-oci-image
// layered: busybox plus layers with a whiteout, an opaque directory, a hard link and symlinks) boots as the
// root, with its Entrypoint, Cmd, Env, WorkingDir and User honoured as `docker run` does; and the same image
// pulled from a real registry (Debian's docker-registry, here or in the rig's L1) and run. Pulling in all its
// cases is tested on the host (tests/unit/host_image_store_test.cpp).
//
// tools/test stages the archive as guest/oci-layered.tar (SANDLOT_OCI_TEST_ARCHIVE overrides) and a registry
// storage holding the image as guest/oci-registry (tools/build-oci-image --registry-storage).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "host/lib/paths.h"
#include "tests/support/local_registry.h"
#include "tests/vm/vm_test_support.h"

namespace sandlot::vmtest {
namespace {

constexpr const char* kImage = "sandlot-test/layered";

std::string archive_path() {
    if (const char* path = std::getenv("SANDLOT_OCI_TEST_ARCHIVE")) return path;
    return host::guest_dir() + "/oci-layered.tar";
}

class ImageVm : public ::testing::Test {
  protected:
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        ASSERT_TRUE(std::filesystem::exists(archive_path()))
            << archive_path()
            << " is missing: tools/build-oci-image layered DIR --docker-archive FILE makes it";
        auto imported = run_sandlot({"image", "import", archive_path()});
        ASSERT_EQ(imported.status, 0) << imported.err;
        EXPECT_NE(imported.out.find("docker.io/sandlot-test/layered:latest"), std::string::npos)
            << imported.out;
    }
};

TEST_F(ImageVm, RunsTheImagesEntrypointAndCmd) {
    auto run = run_sandlot({"run", kImage, "--"});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "entry default-cmd\n");
    // Arguments replace Cmd, not Entrypoint; without `--`, a reference with a '/' or ':' is the image.
    auto args = run_sandlot({"run", kImage, "--", "one", "two"});
    EXPECT_EQ(args.status, 0) << args.err;
    EXPECT_EQ(args.out, "entry one two\n");
    auto docker_style = run_sandlot({"run", std::string(kImage) + ":latest", "three"});
    EXPECT_EQ(docker_style.status, 0) << docker_style.err;
    EXPECT_EQ(docker_style.out, "entry three\n");
}

TEST_F(ImageVm, EntrypointOverrideSeesTheImagesConfigAndLayers) {
    auto run =
        run_sandlot({"run", "--entrypoint", "/bin/sh", "--image", kImage, "--", "-c",
                     "echo $IMAGE_VAR; pwd; id -u; id -g; cat /data/kept /data/replaced; "
                     "test ! -e /data/gone && echo gone; stat -c %h /data/hardlink; readlink /data/symlink; "
                     "cat /data/abs-symlink; ls /data/old; touch /work/w && echo writable"});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out,
              "from-image\n/work\n1000\n1000\nkept\nsecond version\ngone\n2\nfile\nkept\ntwo\nwritable\n");
    // -e, -w and -u win over the image's settings.
    auto overridden = run_sandlot({"run", "-e", "IMAGE_VAR=mine", "-w", "/", "-u", "root", "--entrypoint", "",
                                   "--image", kImage, "--", "sh", "-c", "echo $IMAGE_VAR; pwd; id -u"});
    EXPECT_EQ(overridden.status, 0) << overridden.err;
    EXPECT_EQ(overridden.out, "mine\n/\n0\n");
}

TEST_F(ImageVm, PullsFromARegistryAndRunsTheImage) {
    std::string storage = host::guest_dir() + "/oci-registry";
    ASSERT_TRUE(std::filesystem::exists(storage)) << storage << " is missing (tools/test stages it)";
    auto registry = test::LocalRegistry::start({.seed_storage = storage});
    ASSERT_TRUE(registry) << registry.error().to_string();
    std::string ref = (*registry)->host() + "/sandlot-test/layered:latest";
    auto run = run_sandlot({"run", "--insecure-registry", ref, "--", "pulled"});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "entry pulled\n");
    auto listed = run_sandlot({"images", "-q"});
    EXPECT_NE(listed.out.find(ref), std::string::npos) << listed.out;
    // Now in the store: --pull never finds it, with the registry gone.
    (*registry)->kill();
    auto again = run_sandlot({"run", "--pull", "never", ref});
    EXPECT_EQ(again.status, 0) << again.err;
    EXPECT_EQ(again.out, "entry default-cmd\n");
}

TEST_F(ImageVm, RmiRefusesAnImageASandboxBootsFrom) {
    // A home of its own, where the image has exactly the names given here.
    SandlotRunOptions home{.env = {"SANDLOT_HOME=" + temp_dir()}};
    auto sandlot = [&](const std::vector<std::string>& args) { return run_sandlot(args, home); };
    auto imported = sandlot({"image", "import", archive_path()});
    ASSERT_EQ(imported.status, 0) << imported.err;
    auto named = sandlot({"image", "import", "--name", "sandlot-test/rmi:v1", archive_path()});
    ASSERT_EQ(named.status, 0) << named.err;
    auto created = sandlot({"create", "imgbox", "--image", "sandlot-test/rmi:v1"});
    ASSERT_EQ(created.status, 0) << created.err;
    // Another name for the same image may go; the last one may not while the sandbox exists.
    auto untag = sandlot({"rmi", kImage});
    EXPECT_EQ(untag.status, 0) << untag.err;
    auto refused = sandlot({"rmi", "sandlot-test/rmi:v1"});
    EXPECT_EQ(refused.status, 125);
    EXPECT_NE(refused.err.find("in use by sandbox \"imgbox\""), std::string::npos) << refused.err;
    auto started = sandlot({"start", "imgbox"});
    EXPECT_EQ(started.status, 0) << started.err;
    auto exec = sandlot({"exec", "imgbox", "--", "cat", "/data/kept"});
    EXPECT_EQ(exec.out, "kept\n") << exec.err;
    auto removed = sandlot({"rm", "-f", "imgbox"});
    EXPECT_EQ(removed.status, 0) << removed.err;
    auto rmi = sandlot({"rmi", "sandlot-test/rmi:v1"});
    EXPECT_EQ(rmi.status, 0) << rmi.err;
    auto list = sandlot({"images", "-q"});
    EXPECT_EQ(list.out, "");
}

}  // namespace
}  // namespace sandlot::vmtest
