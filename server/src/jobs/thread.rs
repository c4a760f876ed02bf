//! The thread a job's engine work runs on, and what its errors may say.

use crate::engine::EngineError;

/// Runs a job's engine work on a thread of its own at the lowest CPU priority
/// (`SCHED_IDLE`): a copy may use the machine fully, but requests and event streams come
/// first, so the API stays responsive while copies run. (At nice 10, `make load` showed a
/// copy's thread, busy in the kernel creating files, holding a third of both cores while
/// 500 event streams waited.)
pub(super) async fn run_in_background<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("doppel-job".into())
        .spawn(move || {
            // SAFETY: a plain syscall; on Linux, pid 0 is the calling thread only (threads
            // it starts inherit the policy).
            unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            }
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        return Err(EngineError::Integrity(format!(
            "cannot start the job thread: {e}"
        )));
    }
    rx.await
        .unwrap_or_else(|_| Err(EngineError::Integrity("the job panicked".into())))
}

/// Job errors are read by project members, who are not told where servers keep their
/// trees: paths on a server are named by what they are ("the source tree: No such file").
pub(super) fn without_paths(e: EngineError, names: &[(String, &str)]) -> EngineError {
    let clean = |mut text: String| {
        for (path, name) in names {
            text = text.replace(path.as_str(), name);
        }
        text
    };
    match e {
        EngineError::Io { context, source } => EngineError::Io {
            context: clean(context),
            source,
        },
        EngineError::Disconnected { context, source } => EngineError::Disconnected {
            context: clean(context),
            source,
        },
        EngineError::Integrity(m) => EngineError::Integrity(clean(m)),
        EngineError::Refused(m) => EngineError::Refused(clean(m)),
        EngineError::Incomplete(m) => EngineError::Incomplete(clean(m)),
        EngineError::Cancelled => EngineError::Cancelled,
    }
}
