// NCCL's check macro, which needs no device (a null communicator is refused before any device
// work): part of gpu_check where the NCCL communicator is built.
#include "gpu_test.hpp"
#include "tessera/comm/nccl_communicator.hpp"
#include "tessera/core/error.hpp"

#include <gtest/gtest.h>
#include <nccl.h>

#include <string>

using namespace tessera;
using tessera::testing::error_message;

TEST(NcclCheck, FailingCallThrowsWithCallStatusAndLine) {
  int count = -1;
  int line = 0;
  const std::string message = error_message([&] {
    line = __LINE__ + 1;
    TESSERA_NCCL_CHECK(ncclCommCount(nullptr, &count));
  });
  EXPECT_EQ(
      message,
      std::string("NCCL call 'ncclCommCount(nullptr, &count)' failed: ncclInvalidArgument (") +
          ncclGetErrorString(ncclInvalidArgument) +
          ") [test_gpu_nccl_check.cpp:" + std::to_string(line) + "]");
  EXPECT_NO_THROW(TESSERA_NCCL_CHECK(ncclSuccess));
}

TEST(NcclCheck, StatusNames) {
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclSuccess), "ncclSuccess");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclUnhandledCudaError), "ncclUnhandledCudaError");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclSystemError), "ncclSystemError");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclInternalError), "ncclInternalError");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclInvalidUsage), "ncclInvalidUsage");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclRemoteError), "ncclRemoteError");
  EXPECT_STREQ(comm::detail::nccl_status_name(ncclInProgress), "ncclInProgress");
}
