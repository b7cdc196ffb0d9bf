//! Forward-auth's divert before routing (a [`Diverter`] for
//! [`super::divert::DivertLayer`]): the endpoint's requests go to [`ForwardAuth`]
//! (`crate::forward_auth`); every other request goes on to the inner service untouched.
//!
//! A spelling of the endpoint that only normalization reveals (`/_gateway/%61uth`) is
//! refused with 400 rather than routed: the endpoint's path is never routed to an
//! upstream, in any spelling. It sits between the rescue layer (which renders its
//! refusals) and the relay's divert: their paths may not overlap, but the endpoint owns
//! every raw spelling under it, so `/_gateway/auth/../../auth/v1/user/me` is decided here,
//! never relayed.

use http::Request;

use super::divert::{Answer, Diverter};
use crate::forward_auth::{ForwardAuth, Target};
use crate::http::Body;

/// Forward-auth's divert: `DivertLayer::new(forward_auth)` in the stack.
impl Diverter for ForwardAuth {
    /// [`Target::Endpoint`] or [`Target::Disguised`].
    type Taken = Target;

    fn takes(&self, req: &Request<Body>) -> Option<Target> {
        match self.target(req.uri().path()) {
            Target::Elsewhere => None,
            target => Some(target),
        }
    }

    fn divert(&self, req: Request<Body>, target: Target) -> Answer {
        match target {
            Target::Disguised => Box::pin(std::future::ready(Err(self.disguised()))),
            _ => Box::pin(self.clone().answer(req)),
        }
    }
}
