//! Reading and cancelling jobs, and the idempotency keys of the requests that start them.

use app::model::*;
use sqlx::Row;

use super::{check_id, internal, Service};
use crate::store::job_from_row;

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
        let rows = sqlx::query(
            "SELECT * FROM jobs
             WHERE ($1 IS NULL OR container_id = $1 OR source_container_id = $1)
               AND ($2 IS NULL OR project_id = $2)
               AND ($3 IS NULL OR status = $3)
               AND ($4 IS NULL OR kind = $4)
               AND ($5 = 1 OR project_id IN (SELECT project_id FROM memberships WHERE user_id = $6))
             ORDER BY created_at DESC, id DESC LIMIT 500",
        )
        .bind(&filter.container_id)
        .bind(&filter.project_id)
        .bind(&filter.status)
        .bind(&filter.kind)
        .bind(i64::from(user.is_admin))
        .bind(&user.id)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(rows
            .iter()
            .filter(|r| vis.can_see(r.get::<&str, _>("project_id")))
            .map(job_from_row)
            .collect())
    }

    pub async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        check_id("job id", id)?;
        let vis = self.visibility(user).await?;
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.read)
            .await
            .map_err(internal)?;
        match row {
            Some(r) if vis.can_see(r.get::<&str, _>("project_id")) => Ok(job_from_row(&r)),
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
        sqlx::query("UPDATE jobs SET status = 'cancelled' WHERE id = $1 AND status = 'queued'")
            .bind(id)
            .execute(&self.db.write)
            .await
            .map_err(internal)?;
        self.jobs.cancel(id);
        self.get_job(user, id).await
    }

    /// The job this user started with this idempotency key, if any.
    pub(super) async fn job_by_idempotency_key(
        &self,
        user: &UserInfo,
        key: &str,
    ) -> Result<Option<Job>, ApiError> {
        let row =
            sqlx::query("SELECT * FROM jobs WHERE requested_by = $1 AND idempotency_key = $2")
                .bind(&user.id)
                .bind(key)
                .fetch_optional(&self.db.read)
                .await
                .map_err(internal)?;
        Ok(row.as_ref().map(job_from_row))
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
