//! Routes ("pigeons"): their raw form, tag patterns, and the compiled, immutable [`RouteTable`]
//! the router looks letters up in.
//!
//! Nothing here knows about Kafka or the store.

pub mod pattern;
pub mod spec;
mod table;
pub mod window;

pub use pattern::TagPattern;
pub use spec::{parse_spec, Action, DestinationSpec, MatchSpec, PigeonSpec};
pub use table::{
    module_topic, resolve, standing, validate, validate_destination_topic, validate_topic, Built, Clock,
    CompileErrors, Contracts, Destination, Lookup, Paths, Quarantined, Route, RouteScript, RouteTable,
    Source, TagSource, TopicRoutes, VersionedPigeon, INGRESS,
};
pub use window::{Phase, Window, WindowSpec};
