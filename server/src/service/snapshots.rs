//! Snapshots: a container's tree frozen under a name.

use app::model::*;

use super::{internal, Service};

impl Service {
    pub async fn list_snapshots(
        &self,
        user: &UserInfo,
        container_id: &str,
    ) -> Result<Vec<Snapshot>, ApiError> {
        Ok(self.get_container(user, container_id).await?.snapshots)
    }

    /// `POST /containers/{id}/snapshots`: freezes the current tree under a name.
    pub async fn create_snapshot(
        &self,
        user: &UserInfo,
        container_id: &str,
        name: &str,
    ) -> Result<Snapshot, ApiError> {
        let c = self.get_container(user, container_id).await?;
        self.visibility(user)
            .await?
            .require_operator(&c.summary.project_id, "taking a snapshot")?;
        validate_container_name(name)
            .map_err(|m| ApiError::new(ErrorCode::Unprocessable, format!("name: {m}")))?;
        if c.snapshots.iter().any(|s| s.name == name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("a snapshot named {name:?} exists"),
            ));
        }
        if matches!(
            c.summary.status,
            ContainerStatus::Copying | ContainerStatus::Failed
        ) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the container has no complete tree yet",
            ));
        }
        let id = super::inventory::create_snapshot(&self.db, container_id, name)
            .await
            .map_err(|e| match e {
                super::inventory::InventoryError::Exists(m) => {
                    ApiError::new(ErrorCode::Conflict, format!("{m} already exists"))
                }
                e => internal(e),
            })?;
        self.db
            .snapshot(&id)
            .await
            .map_err(internal)?
            .ok_or_else(ApiError::internal)
    }
}
