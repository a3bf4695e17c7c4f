#include "vmm/devices/i8042/i8042.h"

#include <gtest/gtest.h>

namespace sandlot::vmm {
namespace {

TEST(I8042Test, PulseResetCommandRequestsReset) {
    int resets = 0;
    I8042 controller([&] { ++resets; });
    const uint8_t reset[] = {0xfe};
    controller.write(4, reset);  // port 0x64
    EXPECT_EQ(resets, 1);
    controller.write(4, reset);
    EXPECT_EQ(resets, 2);
}

TEST(I8042Test, OtherWritesAreIgnored) {
    int resets = 0;
    I8042 controller([&] { ++resets; });
    const uint8_t reset[] = {0xfe};
    controller.write(0, reset);  // 0xfe on the data port is just data
    const uint8_t other[] = {0xd1};
    controller.write(4, other);
    const uint8_t wide[] = {0xfe, 0, 0, 0};
    controller.write(4, wide);
    EXPECT_EQ(resets, 0);
}

TEST(I8042Test, ReadsShowNoDataAndAnEmptyInputBuffer) {
    I8042 controller([] {});
    for (uint64_t offset : {0, 4}) {
        uint8_t value = 0xff;
        controller.read(offset, std::span(&value, 1));
        EXPECT_EQ(value, 0) << "offset " << offset;
    }
    uint8_t wide[2] = {0xff, 0xff};
    controller.read(4, wide);
    EXPECT_EQ(wide[0], 0);
    EXPECT_EQ(wide[1], 0);
}

}  // namespace
}  // namespace sandlot::vmm
