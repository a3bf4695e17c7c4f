// OCI images (host/lib/image_store.h): `sandlot pull`, `images`, `rmi`, `image
// ls|pull|inspect|import|rm|prune`, and `sandlot registry login|logout` (host/lib/registry_config.h).
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "host/cli/commands.h"
#include "host/cli/pull_display.h"
#include "host/cli/sandbox_args.h"
#include "host/lib/image_store.h"
#include "host/lib/oci_reference.h"
#include "host/lib/paths.h"
#include "host/lib/registry_client.h"
#include "host/lib/registry_config.h"

namespace sandlot::cli {

namespace {

struct PullArgs {
    std::string reference;
    bool insecure = false;
    std::string ca_file;
    bool quiet = false;
};

void add_pull_options(CLI::App& cmd, PullArgs& args) {
    cmd.add_option("reference", args.reference, "Image reference: NAME[:TAG] or NAME@sha256:DIGEST")
        ->required();
    cmd.add_flag("--insecure", args.insecure,
                 "Speak plain HTTP to the registry (a local registry on localhost)");
    cmd.add_option("--ca-file", args.ca_file, "A PEM CA certificate to trust for this registry");
    cmd.add_flag("-q,--quiet", args.quiet, "Print only the image id");
}

int pull(const PullArgs& args) {
    host::PullOptions options;
    options.policy = host::PullPolicy::Always;
    options.insecure = args.insecure;
    options.ca_file = args.ca_file;
    auto display = std::make_shared<PullDisplay>();
    bool terminal = !args.quiet && isatty(STDERR_FILENO);
    if (terminal) options.progress = [display](const host::PullProgress& p) { display->update(p); };
    // The time the download took and the root's preparation, told apart by the store's first status.
    using Clock = std::chrono::steady_clock;
    auto started = Clock::now();
    auto preparing = std::make_shared<std::optional<Clock::time_point>>();
    options.status = [terminal, preparing](const std::string& text) {
        if (text.starts_with("preparing") && !*preparing) *preparing = Clock::now();
        if (terminal) fmt::print(stderr, "{}\n", text);
    };
    host::ImageStore store;
    auto image = store.pull(args.reference, options);
    if (!image) return fail(image.error());
    auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
    if (args.quiet) {
        fmt::print("{}\n", image->id);
    } else if (*preparing) {
        fmt::print("{} {} ({}, root {}) in {:.2f} s: download {:.2f} s, prepare {:.2f} s\n", image->name,
                   image->id, image->manifest_digest, human_bytes(image->root_bytes),
                   seconds(Clock::now() - started), seconds(**preparing - started),
                   seconds(Clock::now() - **preparing));
    } else {
        fmt::print("{} {} ({}, root {}, already prepared)\n", image->name, image->id, image->manifest_digest,
                   human_bytes(image->root_bytes));
    }
    return 0;
}

// "docker.io/library/debian:12" → ("docker.io/library/debian", "12").
std::pair<std::string, std::string> split_name(const std::string& name) {
    auto at = name.find('@');
    if (at != std::string::npos) return {name.substr(0, at), "<none>"};
    auto colon = name.rfind(':');
    if (colon != std::string::npos && name.find('/', colon) == std::string::npos)
        return {name.substr(0, colon), name.substr(colon + 1)};
    return {name, "<none>"};
}

std::string age(int64_t created_ns) {
    if (created_ns <= 0) return "-";
    auto seconds =
        (std::chrono::system_clock::now().time_since_epoch() - std::chrono::nanoseconds(created_ns)) /
        std::chrono::seconds(1);
    if (seconds < 120) return fmt::format("{} seconds ago", seconds);
    if (seconds < 7200) return fmt::format("{} minutes ago", seconds / 60);
    if (seconds < 172800) return fmt::format("{} hours ago", seconds / 3600);
    return fmt::format("{} days ago", seconds / 86400);
}

int list_images(bool quiet, bool json_output) {
    host::ImageStore store;
    auto images = store.list();
    if (!images) return fail(images.error());
    if (json_output) {
        nlohmann::json all = nlohmann::json::array();
        for (const auto& image : *images)
            all.push_back(host::image_to_json(image));
        fmt::print("{}\n", all.dump(2));
        return 0;
    }
    if (!quiet)
        fmt::print("{:<48} {:<16} {:<14} {:>10}  {}\n", "REPOSITORY", "TAG", "IMAGE ID", "SIZE", "CREATED");
    for (const auto& image : *images) {
        if (quiet) {
            fmt::print("{}\n", image.name);
            continue;
        }
        auto [repository, tag] = split_name(image.name);
        fmt::print("{:<48} {:<16} {:<14} {:>10}  {}\n", repository, tag, image.id.substr(7, 12),
                   human_bytes(image.root_bytes), age(image.created_ns));
    }
    return 0;
}

int inspect(const std::vector<std::string>& references) {
    host::ImageStore store;
    nlohmann::json all = nlohmann::json::array();
    for (const auto& reference : references) {
        auto image = store.find(reference);
        if (!image) return fail(image.error());
        if (!*image) return fail("no image " + reference);
        all.push_back(host::image_to_json(**image));
    }
    fmt::print("{}\n", all.dump(2));
    return 0;
}

int remove(const std::vector<std::string>& references) {
    host::ImageStore store;
    int status = 0;
    for (const auto& reference : references) {
        if (auto removed = store.remove(reference); !removed) {
            status = fail(removed.error());
        } else {
            fmt::print("Untagged: {}\n", reference);
        }
    }
    return status;
}

int prune() {
    host::ImageStore store;
    auto result = store.prune();
    if (!result) return fail(result.error());
    for (const auto& id : result->removed_images)
        fmt::print("Deleted: {}\n", id);
    fmt::print("Reclaimed {}\n", human_bytes(result->reclaimed_bytes));
    return 0;
}

int import(const std::string& path, const std::string& name) {
    host::ImageStore store;
    std::function<void(const std::string&)> status;
    if (isatty(STDERR_FILENO)) status = [](const std::string& text) { fmt::print(stderr, "{}\n", text); };
    auto images = store.import(path, name, status);
    if (!images) return fail(images.error());
    for (const auto& image : *images)
        fmt::print("{} {}\n", image.name, image.id);
    return 0;
}

struct LoginArgs {
    std::string registry;
    std::string username;
    std::string password;
    bool password_stdin = false;
    bool insecure = false;
    std::string ca_file;
};

int login(const LoginArgs& args) {
    if (args.username.empty()) return fail("registry login needs a user name (-u)");
    std::string password = args.password;
    if (args.password_stdin) {
        std::getline(std::cin, password);
        while (!password.empty() && (password.back() == '\n' || password.back() == '\r'))
            password.pop_back();
    } else if (password.empty()) {
        return fail("registry login needs a password: --password-stdin (or -p)");
    }
    // A registry given as "host[:port]"; checked by asking it for /v2/ with the credentials.
    auto ref = host::parse_image_reference(args.registry + "/sandlot-login-check");
    if (!ref) return fail("bad registry \"" + args.registry + "\"");
    host::RegistrySettings settings;
    settings.insecure = args.insecure;
    settings.ca_file =
        args.ca_file.empty() ? host::registry_ca_file(host::home_dir(), ref->registry) : args.ca_file;
    settings.credentials = host::RegistryCredentials{args.username, password};
    host::RegistryClient client(*ref, settings);
    if (auto checked = client.check_access(); !checked) return fail(checked.error());
    if (auto saved = host::save_registry_credentials(host::home_dir(), ref->registry, *settings.credentials);
        !saved)
        return fail(saved.error());
    fmt::print("Login Succeeded: {}\n", ref->registry);
    return 0;
}

int logout(const std::string& registry) {
    auto ref = host::parse_image_reference(registry + "/sandlot-login-check");
    if (!ref) return fail("bad registry \"" + registry + "\"");
    auto removed = host::remove_registry_credentials(host::home_dir(), ref->registry);
    if (!removed) return fail(removed.error());
    if (!*removed) return fail("not logged in to " + ref->registry);
    fmt::print("Removed the credentials for {}\n", ref->registry);
    return 0;
}

struct ImageArgs {
    PullArgs pull;
    std::vector<std::string> references;
    bool quiet = false;
    bool json_output = false;
    std::string path, name;
    LoginArgs login;
};

}  // namespace

std::vector<std::pair<std::string, CommandRunner>> add_image_commands(CLI::App& app) {
    auto args = std::make_shared<ImageArgs>();
    std::vector<std::pair<std::string, CommandRunner>> commands;

    auto* pull_cmd = app.add_subcommand("pull", "Pull an image from a registry");
    add_pull_options(*pull_cmd, args->pull);
    commands.emplace_back("pull", [args] { return pull(args->pull); });

    auto* images_cmd = app.add_subcommand("images", "List images");
    images_cmd->add_flag("-q,--quiet", args->quiet, "Only print names");
    images_cmd->add_flag("--json", args->json_output, "Print JSON");
    commands.emplace_back("images", [args] { return list_images(args->quiet, args->json_output); });

    auto* rmi_cmd = app.add_subcommand("rmi", "Remove images (refused while a sandbox uses one)");
    rmi_cmd->add_option("references", args->references, "Image references or ids")->required();
    commands.emplace_back("rmi", [args] { return remove(args->references); });

    auto* image = app.add_subcommand("image", "Manage images");
    image->require_subcommand(1);
    auto* ls = image->add_subcommand("ls", "List images");
    ls->add_flag("-q,--quiet", args->quiet, "Only print names");
    ls->add_flag("--json", args->json_output, "Print JSON");
    auto* image_pull = image->add_subcommand("pull", "Pull an image from a registry");
    add_pull_options(*image_pull, args->pull);
    auto* inspect_cmd = image->add_subcommand("inspect", "Show images as JSON");
    inspect_cmd->add_option("references", args->references, "Image references or ids")->required();
    auto* import_cmd = image->add_subcommand("import", "Import a docker save archive or an OCI image layout");
    import_cmd->add_option("path", args->path, "The archive (tar, tar.gz) or layout directory")->required();
    import_cmd->add_option("--name", args->name, "Name the image (needed when the archive names none)");
    auto* rm = image->add_subcommand("rm", "Remove images");
    rm->add_option("references", args->references, "Image references or ids")->required();
    auto* prune_cmd =
        image->add_subcommand("prune", "Remove unnamed images, unused layers and stale downloads");
    commands.emplace_back("image", [=] {
        if (ls->parsed()) return list_images(args->quiet, args->json_output);
        if (image_pull->parsed()) return pull(args->pull);
        if (inspect_cmd->parsed()) return inspect(args->references);
        if (import_cmd->parsed()) return import(args->path, args->name);
        if (rm->parsed()) return remove(args->references);
        if (prune_cmd->parsed()) return prune();
        return kSandlotFailed;
    });

    auto* registry = app.add_subcommand("registry", "Registry credentials");
    registry->require_subcommand(1);
    auto* login_cmd = registry->add_subcommand("login", "Check and store credentials for a registry (0600)");
    login_cmd->add_option("registry", args->login.registry, "host[:port]")->required();
    login_cmd->add_option("-u,--username", args->login.username, "User name");
    login_cmd->add_option("-p,--password", args->login.password, "Password (prefer --password-stdin)");
    login_cmd->add_flag("--password-stdin", args->login.password_stdin, "Read the password from stdin");
    login_cmd->add_flag("--insecure", args->login.insecure, "Speak plain HTTP to the registry");
    login_cmd->add_option("--ca-file", args->login.ca_file,
                          "A PEM CA certificate to trust for this registry");
    auto* logout_cmd = registry->add_subcommand("logout", "Forget a registry's credentials");
    logout_cmd->add_option("registry", args->login.registry, "host[:port]")->required();
    commands.emplace_back("registry", [=] {
        if (login_cmd->parsed()) return login(args->login);
        if (logout_cmd->parsed()) return logout(args->login.registry);
        return kSandlotFailed;
    });
    return commands;
}

}  // namespace sandlot::cli
