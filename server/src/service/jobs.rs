//! Reading and cancelling jobs, and the idempotency keys of the requests that start them.

use app::model::*;

use super::{check_id, internal, Service};

impl Service {
    pub async fn list_jobs(
        &self,
        user: &UserInfo,
        filter: &JobFilter,
    ) -> Result<Vec<Job>, ApiError> {
        let vis = self.visibility(user).await?;
        if let Some(id) = &filter.container_id {
            check_id("container_id", id)?;
        }
        if let Some(id) = &filter.project_id {
            check_id("project_id", id)?;
            if !vis.can_see(id) {
                return Err(ApiError::not_found("project", id));
            }
        }
        if let Some(s) = &filter.status {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status {s:?} is not one of queued, running, succeeded, failed, cancelled"
                ))
            })?;
        }
        if let Some(k) = &filter.kind {
            JobKind::parse(k)
                .ok_or_else(|| ApiError::invalid(format!("kind {k:?} is not one of copy, sync")))?;
        }
        let jobs = self
            .db
            .jobs(filter, &user.id, user.is_admin)
            .await
            .map_err(internal)?;
        Ok(jobs
            .into_iter()
            .filter(|j| vis.can_see(&j.project_id))
            .collect())
    }

    pub async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        check_id("job id", id)?;
        let vis = self.visibility(user).await?;
        match self.db.job(id).await.map_err(internal)? {
            Some(job) if vis.can_see(&job.project_id) => Ok(job),
            _ => Err(ApiError::not_found("job", id)),
        }
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        let job = self.get_job(user, id).await?;
        self.visibility(user)
            .await?
            .require_operator(&job.project_id, "cancelling this job")?;
        if job.status.is_final() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("the job has already {}", job.status.as_str()),
            ));
        }
        // A queued job is marked at once (the runner sees it when it gets a slot); a
        // running one stops at its next check and the runner records it.
        self.db.cancel_if_queued(id).await.map_err(internal)?;
        self.jobs.cancel(id);
        self.get_job(user, id).await
    }

    /// The job this user started with this idempotency key, if any.
    pub(super) async fn job_by_idempotency_key(
        &self,
        user: &UserInfo,
        key: &str,
    ) -> Result<Option<Job>, ApiError> {
        self.db
            .job_by_idempotency_key(&user.id, key)
            .await
            .map_err(internal)
    }
}

/// An `Idempotency-Key` as given: 1 to 200 visible ASCII characters.
pub(super) fn check_idempotency_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(k)
            if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(k.to_string()))
        }
        Some(_) => Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}
