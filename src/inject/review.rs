//! One AdmissionReview: read it, decide, answer. The answer always echoes
//! the request's `uid`; a pod that is not to be injected is allowed
//! unchanged, a pod with a bad `tollgate.dev/*` annotation is denied with a
//! message that names it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube_core::DynamicObject;

use super::annotations::{self, Wish};
use super::patch;
use crate::config::inject::{AppMode, SidecarMode, SidecarSpec};

/// What was decided for one review: logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The sidecar was added.
    Injected(SidecarMode, AppMode),
    /// The pod has the sidecar already (a reinvocation, or a re-created pod).
    AlreadyInjected,
    /// Neither the pod nor its namespace asked for it.
    NotRequested,
    /// The pod said `tollgate.dev/inject: "false"`.
    OptedOut,
    /// A bad `tollgate.dev/*` annotation (or a port conflict).
    Denied,
    /// Not a Pod CREATE: allowed untouched (the webhook's rules should not
    /// send these).
    Ignored,
}

impl Decision {
    /// The `decision` label of `tollgate_inject_reviews_total`.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Injected(..) => "injected",
            Decision::AlreadyInjected => "already_injected",
            Decision::NotRequested => "not_requested",
            Decision::OptedOut => "opted_out",
            Decision::Denied => "denied",
            Decision::Ignored => "ignored",
        }
    }
}

/// Why a body could not be answered as a review.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// A review's request, with the Pod read from it when it is a Pod CREATE.
pub struct Request {
    pub request: AdmissionRequest<DynamicObject>,
    /// `None` for anything but a Pod CREATE.
    pub pod: Option<Pod>,
}

impl Request {
    /// Reads a review body.
    pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| ReviewError::NoRequest)?;
        let is_pod_create = request.operation == Operation::Create
            && request.kind.group.is_empty()
            && request.kind.kind == "Pod"
            && request.sub_resource.is_none();
        let pod = match (&request.object, is_pod_create) {
            (Some(object), true) => Some(serde_json::from_value(serde_json::to_value(object)?)?),
            _ => None,
        };
        Ok(Request { request, pod })
    }

    /// The pod's own `tollgate.dev/inject` wish (`Unset` for a non-pod):
    /// when it is `Unset`, the namespace's annotation decides.
    pub fn pod_wish(&self) -> Wish {
        let Some(pod) = &self.pod else {
            return Wish::Unset;
        };
        // A bad value is reported by `decide`; here it only must not send
        // the webhook to the namespace.
        annotations::wish(&pod_annotations(pod)).unwrap_or(Wish::Inject)
    }

    /// The namespace the pod is created in.
    pub fn namespace(&self) -> &str {
        self.request.namespace.as_deref().unwrap_or("default")
    }

    /// The pod's name, or its `generateName` prefix (pods of a ReplicaSet
    /// have no name yet), for logs.
    pub fn pod_name(&self) -> String {
        let meta = self.pod.as_ref().map(|p| &p.metadata);
        match (
            meta.and_then(|m| m.name.clone()),
            meta.and_then(|m| m.generate_name.clone()),
        ) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(g)) => format!("{g}*"),
            _ => self.request.name.clone(),
        }
    }
}

fn pod_annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

/// The answer to `req`: `namespace_wish` is the namespace's
/// `tollgate.dev/inject` wish (`Unset` when unknown).
pub fn decide(
    req: &Request,
    spec: &SidecarSpec,
    namespace_wish: Wish,
) -> (AdmissionResponse, Decision) {
    let allow = AdmissionResponse::from(&req.request);
    let Some(pod) = &req.pod else {
        return (allow, Decision::Ignored);
    };
    let annotations = pod_annotations(pod);
    let wish = match annotations::wish(&annotations) {
        Ok(Wish::Unset) => namespace_wish,
        Ok(w) => w,
        Err(bad) => return deny(allow, &[bad]),
    };
    match wish {
        Wish::OptOut => return (allow, Decision::OptedOut),
        Wish::Unset => return (allow, Decision::NotRequested),
        Wish::Inject => {}
    }
    if patch::has_sidecar(pod) {
        return (allow, Decision::AlreadyInjected);
    }
    let settings = match annotations::settings(spec, &annotations) {
        Ok(s) => s,
        Err(bad) => return deny(allow, &bad),
    };
    let patch = match patch::build(pod, &settings) {
        Ok(p) => p,
        Err(bad) => return deny(allow, &[bad]),
    };
    let decision = Decision::Injected(settings.spec.sidecar_mode, settings.spec.mode);
    match allow.clone().with_patch(patch) {
        Ok(res) => (res, decision),
        // A patch of plain JSON values always serializes; if it ever did
        // not, the pod is refused like any pod that cannot be injected.
        Err(e) => {
            let mut res = allow.deny(format!(
                "tollgate sidecar injection: cannot encode the patch: {e}"
            ));
            res.result.code = 500;
            (res, Decision::Denied)
        }
    }
}

fn deny(
    allow: AdmissionResponse,
    bad: &[annotations::BadAnnotation],
) -> (AdmissionResponse, Decision) {
    let message = format!(
        "tollgate sidecar injection: {}",
        bad.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut res = allow.deny(message);
    res.result.code = 400;
    res.result.reason = "BadRequest".into();
    (res, Decision::Denied)
}

/// The review body of `res`. kube-core serializes the patch's bytes as a
/// JSON array of numbers; AdmissionReview v1 has it as a base64 string (Go's
/// `[]byte`), which is what is sent.
pub fn render(res: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let patch = res.patch.clone();
    let mut review = serde_json::to_value(res.into_review())?;
    if let (Some(patch), Some(response)) = (patch, review.get_mut("response")) {
        response["patch"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&review)
}
