// Guest filesystem streams on the agent's event loop (the conversation is specified in proto/fs.h).
//
// One FsService serves every connection of a Server: it registers the FS_REQUEST, FS_DATA, FS_ENTRY,
// FS_WINDOW, FS_COMMIT and FS_CANCEL handlers and a pair of connection hooks. One-shot operations are
// answered inside the FS_REQUEST handler. Streaming ones keep a stream: reads produce FS_ENTRY/FS_DATA frames
// while the host's credit lasts and the connection's send queue is below its high-water mark (resumed by
// FS_WINDOW and the output-drained hook); writes consume frames within the credit the agent granted and grant
// more once they are on disk. So each turn is bounded, execs on the same loop keep running, and memory stays
// bounded whatever the host sends.
//
// Every step runs under the request's filesystem identity (agentd/fs_ops.h FsIdentity). A stream whose
// connection closes is abandoned: a write's temporary file is removed, so nothing half-written appears.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "agentd/exec_user.h"
#include "agentd/server.h"

namespace sandlot::agent {

struct FsConfig {
    UserDbPaths user_db;
    // The user requests run as when they name none ("" = root, or the agent's own user when not root).
    std::string default_user;
};

// Credit the agent grants a write stream, and the largest FS_DATA payload it sends.
inline constexpr uint32_t kFsWriteWindow = 8u << 20;
inline constexpr size_t kFsDataChunk = 256 * 1024;
// A read stream's initial window must be at least this (room for the largest FS_ENTRY).
inline constexpr uint32_t kFsMinWindow = 16 * 1024;

class FsService {
  public:
    // Installs the handlers and hooks on `server`, which must outlive the service.
    static std::unique_ptr<FsService> install(Server& server, FsConfig config);
    ~FsService();
    FsService(const FsService&) = delete;
    FsService& operator=(const FsService&) = delete;

    struct Stream;  // one open streaming operation (fs_service.cpp)

  private:
    struct ConnectionState {
        std::unordered_map<uint32_t, std::unique_ptr<Stream>> streams;
        // Streams that ended recently: their late frames (data in flight before our ERROR) are dropped.
        std::deque<uint32_t> recently_ended;
    };

    FsService(Server& server, FsConfig config);

    Result<void> on_request(Connection& conn, const proto::Frame& frame);
    Result<void> on_stream_frame(Connection& conn, const proto::Frame& frame);
    void on_connection_closed(Connection& conn);
    void on_output_drained(Connection& conn);

    // Runs a producing stream until it is out of credit, the connection is congested, or it ended.
    void pump(Connection& conn, Stream& stream);
    // Ends a stream: FS_DONE already sent or `error` to send; forgets it.
    void end(Connection& conn, Stream& stream, const Error* error);

    Server& server_;
    FsConfig config_;
    std::unordered_map<uint64_t, ConnectionState> connections_;
    std::vector<uint8_t> buffer_;
};

}  // namespace sandlot::agent
