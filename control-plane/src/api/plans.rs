//! UsageService: plans now; usage and subscriptions arrive with sync.
use clawplane_proto::v1::usage_service_server::UsageService;
use clawplane_proto::v1::{
    ChangePlanRequest, ChangePlanResponse, GetOverviewRequest, GetOverviewResponse, GetSubscriptionRequest,
    GetSubscriptionResponse, GetUsageRequest, GetUsageResponse, ListPlansRequest, ListPlansResponse, Plan,
};
use tonic::{Request, Response, Status};

use super::{caller, ApiError};
use crate::store::{entities::plan, Store};

pub struct UsageApi {
    store: Store,
}

impl UsageApi {
    pub fn new(store: Store) -> Self {
        UsageApi { store }
    }
}

fn plan_message(model: plan::Model) -> Plan {
    let features = match model.features {
        serde_json::Value::Object(map) => {
            map.into_iter().map(|(k, v)| (k, v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))).collect()
        }
        _ => Default::default(),
    };
    Plan {
        id: model.id,
        name: model.name,
        display_name: model.display_name,
        price_monthly_cents: model.price_monthly_cents,
        currency: model.currency,
        monthly_message_limit: model.monthly_message_limit.unwrap_or(0),
        channel_limit: model.channel_limit.unwrap_or(0),
        features,
    }
}

const LATER: &str = "usage reporting arrives with session sync";

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn list_plans(&self, request: Request<ListPlansRequest>) -> Result<Response<ListPlansResponse>, Status> {
        caller(&request)?;
        let plans = self.store.list_plans().await.map_err(ApiError::from)?;
        Ok(Response::new(ListPlansResponse { plans: plans.into_iter().map(plan_message).collect() }))
    }

    async fn get_usage(&self, request: Request<GetUsageRequest>) -> Result<Response<GetUsageResponse>, Status> {
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }

    async fn get_overview(
        &self,
        request: Request<GetOverviewRequest>,
    ) -> Result<Response<GetOverviewResponse>, Status> {
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<GetSubscriptionResponse>, Status> {
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }

    async fn change_plan(&self, request: Request<ChangePlanRequest>) -> Result<Response<ChangePlanResponse>, Status> {
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }
}
