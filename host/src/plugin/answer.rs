//! The SAN and CSR hooks' answers, lifted out of the plugin's memory with a bound: a denial's
//! list of violations is refused from its length alone, before a single violation is read.
//!
//! Without it, a plugin answering 100,000 violations had the host copy 300,000 strings (tens of
//! megabytes and seconds per decision) only to refuse the answer as malformed afterwards. With
//! at most [`MAX_VIOLATIONS`] records lifted, what the host copies out of an answer is about the
//! answer's own bytes, which the plugin's memory cap (`memory_limit_mib`) bounds: every other
//! part of an answer is a string or a list of one-byte enums, copied byte for byte.
//!
//! The types mirror `violation`, `san-decision` and `csr-decision`, whose shapes are the same in
//! both contract versions; wasmtime type-checks them structurally against each instance's
//! exports. The bound sits in `Lift::linear_lift_list_from_memory`, the hook wasmtime 48 calls
//! to lift a `list<violation>` into a `Vec` (hidden from its documentation: pinned with the
//! wasmtime version, and `tests/it/sandbox.rs` fails if it stops being called).

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

/// Most violations accepted in one denial.
pub(crate) const MAX_VIOLATIONS: usize = 1000;

/// A denial with more than [`MAX_VIOLATIONS`] violations, refused before they were lifted.
#[derive(Debug, thiserror::Error)]
#[error("{0} violations (at most {MAX_VIOLATIONS}), refused before reading them")]
pub(crate) struct TooManyViolations(pub(crate) usize);

/// `violation`, as the bindings would lift it.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct Raw {
    pub(crate) code: String,
    pub(crate) field: String,
    pub(crate) message: String,
}

/// One violation, lifted only as part of a list of at most [`MAX_VIOLATIONS`].
pub(crate) struct Violation(pub(crate) Raw);

// SAFETY: every item is `Raw`'s, whose derived implementation upholds the trait's contract; a
// `Violation` has `Raw`'s layout in the canonical ABI.
#[allow(
    unsafe_code,
    reason = "wasmtime's lift traits are unsafe to implement; every item forwards to a derived one"
)]
unsafe impl ComponentType for Violation {
    type Lower = <Raw as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <Raw as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Raw as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting one element is `Raw`'s derived lift; a list is `Raw`'s element by element,
// after a length check that reads nothing but the list's length.
#[allow(
    unsafe_code,
    reason = "wasmtime's lift traits are unsafe to implement; every item forwards to a derived one"
)]
unsafe impl Lift for Violation {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        Raw::linear_lift_from_flat(cx, ty, src).map(Violation)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        Raw::linear_lift_from_memory(cx, ty, bytes).map(Violation)
    }

    fn linear_lift_list_from_memory(
        cx: &mut LiftContext<'_>,
        list: &WasmList<Self>,
    ) -> wasmtime::Result<Vec<Self>> {
        if list.len() > MAX_VIOLATIONS {
            return Err(TooManyViolations(list.len()).into());
        }
        let mut dst = Vec::with_capacity(list.len());
        Self::linear_lift_into_from_memory(cx, list, &mut dst)?;
        Ok(dst)
    }
}

/// `san-decision`, with a bounded denial (the same shape in both versions).
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum SanAnswer {
    #[component(name = "allow")]
    Allow,
    #[component(name = "deny")]
    Deny(Vec<Violation>),
}

/// Per contract version: `csr-decision` with a bounded denial (its approval and abstention are
/// the version's own records), and both answers as the version's bindings types, for `convert`.
macro_rules! answers {
    ($version:ident) => {
        pub(crate) mod $version {
            use wasmtime::component::{ComponentType, Lift};

            use super::{SanAnswer, Violation};
            use crate::plugin::bindings::$version::exports::rotor::policy::{
                csr_approval, san_validation,
            };
            use crate::plugin::bindings::$version::rotor::policy::types as wit;

            fn violations(list: Vec<Violation>) -> Vec<wit::Violation> {
                list.into_iter()
                    .map(|Violation(r)| wit::Violation {
                        code: r.code,
                        field: r.field,
                        message: r.message,
                    })
                    .collect()
            }

            /// The SAN answer as this version's bindings type.
            pub(crate) fn san(answer: SanAnswer) -> san_validation::SanDecision {
                match answer {
                    SanAnswer::Allow => san_validation::SanDecision::Allow,
                    SanAnswer::Deny(list) => san_validation::SanDecision::Deny(violations(list)),
                }
            }

            /// `csr-decision`, with a bounded denial.
            #[derive(ComponentType, Lift)]
            #[component(variant)]
            pub(crate) enum CsrAnswer {
                #[component(name = "approve")]
                Approve(csr_approval::Approval),
                #[component(name = "deny")]
                Deny(Vec<Violation>),
                #[component(name = "abstain")]
                Abstain(csr_approval::Abstention),
            }

            /// The CSR answer as this version's bindings type.
            pub(crate) fn csr(answer: CsrAnswer) -> csr_approval::CsrDecision {
                match answer {
                    CsrAnswer::Approve(a) => csr_approval::CsrDecision::Approve(a),
                    CsrAnswer::Deny(list) => csr_approval::CsrDecision::Deny(violations(list)),
                    CsrAnswer::Abstain(a) => csr_approval::CsrDecision::Abstain(a),
                }
            }
        }
    };
}

answers!(v01);
answers!(v02);
answers!(v03);
