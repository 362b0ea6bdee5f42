//! The HTTP server: every service's routes behind one stack of middleware, the health
//! endpoints, and `/openapi.json` generated from the handlers' annotations.

mod client_ip;
mod link;
mod origin;
pub use link::LinkToken;
pub use origin::origin_allowed;
mod error;
mod error_page;
pub use error_page::{Back, FormPage, form_problem, sentence};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use pexper_wire::Health;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use client_ip::{ClientIp, client_key};
pub use error::{ApiError, ApiJson, json_error};

/// Renders an HTML page (an askama template over `layouts/page.html`) with a status. A
/// template that fails to render is a bug in our code: it is logged and answered with a plain
/// 500 (the JSON-error layer leaves HTML alone).
pub fn render_page(status: StatusCode, page: impl askama::Template) -> axum::response::Response {
    match page.render() {
        Ok(html) => (status, axum::response::Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page failed to render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

use crate::state::{Platform, Service};

/// Limits of the HTTP stack. The defaults suit production; tests raise the rate limit where
/// they are not testing it.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// A request that takes longer answers 408.
    pub timeout: Duration,
    /// Per-client token bucket: one request is replenished every `replenish`.
    pub replenish: Duration,
    /// How many requests a client may make in a burst.
    pub burst: u32,
    /// The same per client on the collection endpoints (`Service::ingest_routes`): desktop
    /// apps send in bursts at launch and exit, and many share an office's address.
    pub ingest_replenish: Duration,
    pub ingest_burst: u32,
    /// With TLS terminated here: how often the certificate files are checked for a new one.
    pub tls_reload_every: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            timeout: Duration::from_secs(15),
            replenish: Duration::from_millis(500),
            burst: 20,
            ingest_replenish: Duration::from_secs(1),
            ingest_burst: 30,
            tls_reload_every: Duration::from_secs(10),
        }
    }
}

#[derive(OpenApi)]
#[openapi(info(
    title = "Pexper website backend",
    description = "Waitlist, email, payments, privacy requests and anonymous analytics for pexper.com and the Pexper desktop app.",
    license(name = "Apache-2.0")
))]
struct ApiDoc;

/// Process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Database is reachable (as seen at most a second ago: `Readiness`).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "The database answers", body = Health),
    (status = 503, description = "The database does not answer", body = Health)))]
async fn readyz(State(platform): State<Platform>) -> impl IntoResponse {
    if platform.ready().await {
        (
            StatusCode::OK,
            axum::Json(Health {
                status: "ok".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "unavailable".into(),
            }),
        )
    }
}

/// Every operation of the paths `which` takes.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
    which: impl Fn(&str) -> bool,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi
        .paths
        .paths
        .iter_mut()
        .filter(move |(path, _)| which(path))
        .flat_map(|(_, item)| {
            [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
        })
}

/// Documents a JSON error answer `status`, described as `description`, on every operation of
/// the paths `which` takes, where its handler's own document does not say it already.
fn document_error(
    openapi: &mut utoipa::openapi::OpenApi,
    status: &str,
    description: &str,
    which: impl Fn(&str) -> bool,
) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build();
    for operation in operations(openapi, which) {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(response.clone()));
    }
}

/// A browser's form post or navigation gets every error as a page (`error_page`), whichever
/// operation it reaches: each error answer is documented as `text/html` too.
fn document_pages(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, ObjectBuilder, RefOr, Type};
    let html = Content::new(Some(ObjectBuilder::new().schema_type(Type::String).build()));
    for operation in operations(openapi, |_| true) {
        for (status, response) in operation.responses.responses.iter_mut() {
            if let (true, RefOr::T(response)) =
                (status.starts_with('4') || status.starts_with('5'), response)
            {
                response
                    .content
                    .entry("text/html".to_owned())
                    .or_insert_with(|| RefOr::T(html.clone()));
            }
        }
    }
}

/// The assembled application, and the rate limiter's state (which needs periodic pruning).
pub struct App {
    pub router: Router,
    pub openapi: utoipa::openapi::OpenApi,
    limiter_gc: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// A function that forgets clients quiet long enough to have a full bucket again; call it
    /// periodically so the limiter's memory does not grow with every address ever seen.
    pub fn limiter_gc(&self) -> Arc<dyn Fn() + Send + Sync> {
        self.limiter_gc.clone()
    }
}

pub fn app(platform: Platform, services: &[Arc<dyn Service>], options: &HttpOptions) -> App {
    let per_client = |period: Duration, burst: u32| {
        Arc::new(
            GovernorConfigBuilder::default()
                .key_extractor(ClientIp::new(platform.config.trusted_proxies.clone()))
                .period(period)
                .burst_size(burst)
                .finish()
                .expect("a positive period and burst"),
        )
    };
    let governor = per_client(options.replenish, options.burst);
    let ingest_governor = per_client(options.ingest_replenish, options.ingest_burst);
    let limiters = [
        governor.limiter().clone(),
        ingest_governor.limiter().clone(),
    ];

    let mut api = OpenApiRouter::new();
    let mut ingest = OpenApiRouter::new();
    let mut machines = OpenApiRouter::new();
    for service in services {
        api = api.merge(service.routes());
        ingest = ingest.merge(service.ingest_routes());
        machines = machines.merge(service.machine_routes());
    }
    let limited: Vec<String> = [api.get_openapi(), ingest.get_openapi()]
        .into_iter()
        .flat_map(|doc| doc.paths.paths.keys().cloned())
        .collect();
    let api = api.layer(GovernorLayer::new(governor));
    let ingest = ingest.layer(GovernorLayer::new(ingest_governor));

    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .merge(api)
        .merge(ingest)
        .merge(machines)
        .split_for_parts();
    // Every operation but `/healthz` reaches the database, and answers 503 with `Retry-After`
    // while it cannot be reached (`error::database_unavailable`).
    document_error(
        &mut openapi,
        "503",
        "Unavailable right now (the database cannot be reached, or too many passwords are being checked): retry after `Retry-After` seconds",
        |path| path != "/healthz",
    );
    // Every operation behind a per-client limit can answer 429.
    document_error(
        &mut openapi,
        "429",
        "Too many requests from this client: retry after `Retry-After` seconds",
        |path| limited.iter().any(|l| l == path),
    );
    document_pages(&mut openapi);

    let back_links = Arc::new(error_page::BackLinks::new(
        services,
        platform.config.site_url(),
    ));
    let spec = Arc::new(openapi.clone());
    let origins: Vec<HeaderValue> = platform
        .config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600));

    // Served over HTTPS here: browsers are told to use nothing else for two years.
    let hsts = platform.config.tls.is_some().then(|| {
        SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        )
    });
    let foreground = platform.foreground.clone();
    let counted = platform.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(platform)
        .layer(DefaultBodyLimit::max(options.body_limit))
        .layer(RequestBodyLimitLayer::new(options.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            options.timeout,
        ))
        // Outside the limits and the timeout, so their answers get a body too.
        .layer(axum::middleware::from_fn(
            move |request: Request<axum::body::Body>, next: axum::middleware::Next| {
                error::error_bodies(back_links.clone(), request, next)
            },
        ))
        .layer(cors)
        // Tokens travel in some URLs (confirm, unsubscribe): never leak them in a Referer.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(tower::util::option_layer(hsts))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ))
        .layer(
            // The span names the route template, never the URI: query strings carry tokens.
            // No peer address, no header, no body is ever recorded.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".to_owned());
                    tracing::info_span!("request", method = %req.method(), route)
                })
                .on_request(())
                .on_response(
                    |res: &axum::response::Response, latency: Duration, _: &tracing::Span| {
                        tracing::info!(
                            status = res.status().as_u16(),
                            latency_ms = latency.as_millis() as u64,
                            "response"
                        );
                    },
                ),
        )
        // Counts every request, whatever answers it, for the job worker to give way to and
        // for `/metrics` (by its route's template, never its URL).
        .layer(axum::middleware::from_fn(
            move |request: Request<axum::body::Body>, next: axum::middleware::Next| {
                let in_flight = foreground.enter();
                let platform = counted.clone();
                async move {
                    let counted_in_flight = platform.metrics.in_flight();
                    let started = std::time::Instant::now();
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned());
                    let method = request.method().clone();
                    let response = next.run(request).await;
                    drop(in_flight);
                    drop(counted_in_flight);
                    if let Some(pool) = response.extensions().get::<crate::metrics::PoolTimedOut>()
                    {
                        platform.metrics.pool_timed_out(pool.0);
                    }
                    if response.status() == StatusCode::TOO_MANY_REQUESTS {
                        let limit = response.extensions().get::<crate::metrics::Limit>();
                        platform
                            .metrics
                            .rate_limited(route.as_deref(), limit.map_or("per_client", |l| l.0));
                    }
                    platform.metrics.answered(
                        route.as_deref(),
                        &method,
                        response.status(),
                        started.elapsed(),
                    );
                    response
                }
            },
        ));

    App {
        router,
        openapi,
        limiter_gc: Arc::new(move || limiters.iter().for_each(|l| l.retain_recent())),
    }
}
