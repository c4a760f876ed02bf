//! The `doppel` binary's admin subcommands, run as a user would.

use std::io::Write;
use std::process::{Output, Stdio};

#[path = "common/process.rs"]
mod process;

fn doppel(data: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = process::doppel(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn token_user_and_import_work_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // A data dir `serve` never made (a typo) is an error, not a new empty install.
    let out = doppel(&data, &["token", "create", "--user", "admin"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no doppel database at"), "{err}");
    assert!(!data.exists(), "nothing is made");
    // What `serve`'s first start makes: the database with its admin.
    std::fs::create_dir_all(&data).unwrap();
    let url = format!("sqlite://{}", data.join("doppel.db").display());
    let db = doppel::store::connect(&url).await.unwrap();
    doppel::auth::bootstrap_admin(&db).await.unwrap();

    let out = doppel(&data, &["token", "create", "--user", "admin"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the token alone on stdout: {stdout:?}"
    );
    let token = stdout.trim();
    assert!(token.starts_with("dpl_") && token.len() == 68, "{token}");

    let out = doppel(&data, &["token", "create", "--user", "nobody"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named \"nobody\""));

    let out = doppel(
        &data,
        &["user", "set-password", "admin"],
        "a new long password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = doppel(&data, &["user", "set-password", "admin"], "short\n");
    assert!(!out.status.success());

    // The way back when no platform admin is left (here: the only one disabled and
    // demoted behind doppel's back): the command line makes one again.
    let sql = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE users SET is_admin = 0, disabled_at = 1 WHERE name = 'admin'")
        .execute(&sql)
        .await
        .unwrap();
    let out = doppel(&data, &["user", "make-admin", "admin"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (is_admin, disabled_at): (i64, Option<i64>) =
        sqlx::query_as("SELECT is_admin, disabled_at FROM users WHERE name = 'admin'")
            .fetch_one(&sql)
            .await
            .unwrap();
    assert_eq!((is_admin, disabled_at), (1, None), "an admin, enabled");
    let out = doppel(&data, &["user", "make-admin", "nobody"], "");
    assert!(!out.status.success());

    assert!(
        doppel::auth::check_login(&db, "admin", "a new long password")
            .await
            .unwrap()
            .is_some()
    );
    let (project, server) = process::project_and_server(&db, &data).await;

    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), b"hello\n").unwrap();
    let out = doppel(
        &data,
        &[
            "import",
            tree.to_str().unwrap(),
            "--project",
            &project,
            "--server",
            &server,
            "--name",
            "imported",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(app::model::is_valid_id(&id), "{id}");
    let root = data.join("servers/s1/containers").join(&id);
    assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hello\n");

    // A taken name is refused with a clear message, and nothing is created.
    let out = doppel(
        &data,
        &[
            "import",
            tree.to_str().unwrap(),
            "--project",
            &project,
            "--server",
            &server,
            "--name",
            "imported",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_dir(data.join("servers/s1/containers"))
            .unwrap()
            .count(),
        1
    );

    // A disabled user gets no token: it would not be let in.
    doppel::auth::create_user(&db, "carol", None, false)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET disabled_at = 1 WHERE name = 'carol'")
        .execute(&sql)
        .await
        .unwrap();
    let out = doppel(&data, &["token", "create", "--user", "carol"], "");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"carol\" is disabled"), "{err}");

    // What the command line did is in the audit log, by "command line", from "local".
    let logged: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT actor_name, action, target, address FROM audit ORDER BY id")
            .fetch_all(&sql)
            .await
            .unwrap();
    let by_cli = |action: &str, target: &str| {
        (
            "command line".to_string(),
            action.to_string(),
            target.to_string(),
            "local".to_string(),
        )
    };
    assert_eq!(
        logged,
        [
            by_cli("token.create", "admin"),
            by_cli("user.reset_password", "admin"),
            by_cli("user.make_admin", "admin"),
            by_cli("container.import", &id),
        ],
        "each success once; what was refused changed nothing"
    );
}

#[tokio::test]
async fn image_trees_take_a_size_of_at_least_1g() {
    let tmp = tempfile::tempdir().unwrap();
    for (size, why) in [
        ("512M", "at least 1G"),
        ("2T", "a size such as 64G"),
        ("2000000G", "at most"),
    ] {
        let out = doppel(tmp.path(), &["--image-trees", size, "purge-containers"], "");
        assert!(!out.status.success(), "{size}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{size}: {err}");
    }
    let out = doppel(
        tmp.path(),
        &["--image-trees", "64G", "purge-containers"],
        "",
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_subcommands_help_shows_its_own_options_first_and_serves_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = doppel(tmp.path(), &["token", "create", "--help"], "");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let at = |what: &str| help.find(what).unwrap_or_else(|| panic!("{what}: {help}"));
    // Its own options, then the data dir, then the serve flags (global, so that `doppel
    // --addr X` serves) under a heading of their own.
    assert!(at("--user") < at("Where the data is"), "{help}");
    assert!(at("Where the data is") < at("Options of serve"), "{help}");
    assert!(at("Options of serve") < at("--addr"), "{help}");
    assert!(help.contains("The user's name"), "{help}");
}

/// Two doppels on one data dir would each resume the same interrupted jobs into the same
/// trees and run the same containers: the second one refuses to start, saying who holds
/// it, and the first goes on serving.
#[tokio::test]
async fn a_second_serve_or_agent_on_a_data_dir_in_use_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = process::free_port();
    let mut first = process::serve(&data, port, false);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    process::wait_up(&client, &base).await;
    let holder = format!(
        "another doppel (serve, pid {}) is using the data dir",
        first.id()
    );
    let other_port = process::free_port().to_string();
    for args in [
        vec!["serve", "--no-demo", "--addr"],
        vec!["agent", "--listen"],
    ] {
        let mut child = process::doppel(&data)
            .args(&args)
            .arg(format!("127.0.0.1:{other_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // (One that started anyway would serve until killed.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(&holder), "{args:?}: {err}");
        assert!(
            err.contains("one doppel serve or agent per data dir (stop that one first"),
            "{args:?}: {err}"
        );
    }
    assert!(first.try_wait().unwrap().is_none(), "the first still runs");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
}
