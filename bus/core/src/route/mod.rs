//! Routes ("pigeons"): their raw form, tag patterns, and the compiled, immutable [`RouteTable`]
//! the router looks letters up in.
//!
//! Nothing here knows about Kafka or the store.

pub use crate::tag as pattern;
pub mod spec;
mod table;
pub mod window;

pub use pattern::TagPattern;
pub use spec::{parse_spec, Action, DestinationSpec, MatchSpec, PigeonSpec, SourceConfig};
pub use table::{
    destination_name, module_topic, resolve, script_destinations, standing, validate,
    validate_destination_topic, validate_topic, Built, Clock, CompileErrors, Contracts, Destination, Lookup,
    Paths, Quarantined, Route, RouteScript, RouteTable, Routes, Source, TagSource, TopicRoutes,
    VersionedPigeon, INGRESS,
};
pub use window::{Phase, Window, WindowSpec};
