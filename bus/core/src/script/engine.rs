//! The hardened Rhai engine and the script calling convention.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Map, Scope};

use super::json;
use super::{CompiledScript, ScriptDestination, ScriptError, ScriptLetter, ScriptOutput};

/// Resource limits of every script run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations per letter (about a millisecond of work by default).
    pub max_operations: u64,
    /// Wall-clock time per letter, checked while the script runs.
    pub max_time: Duration,
    /// Function call depth.
    pub max_call_levels: usize,
    /// Expression nesting depth.
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array.
    pub max_array_size: usize,
    /// Entries in one map.
    pub max_map_size: usize,
    /// Letters one run may emit.
    pub max_outputs: usize,
    /// Bytes one run may hold in all, its input included (counted by `pigeon_alloc` where the
    /// binary installs it as its allocator).
    pub max_memory: usize,
    /// How deep a value the script returns may nest (what modules' JSON readers take).
    pub max_depth: usize,
    /// Bytes of source one script may have (compiling takes time that grows faster than its
    /// length: a megabyte of statements took 15 s).
    pub max_source: usize,
}

/// Rhai operations one run may take by default.
pub const DEFAULT_MAX_OPERATIONS: u64 = 50_000;

/// The stack a thread that runs scripts gets. A script can nest a value as deep as it has
/// operations (each level takes one at least), and Rhai's size checks, the conversion of the
/// result and dropping the value each recurse once a level: about 210 bytes a level, measured
/// in a debug build. So the stack holds [`DEFAULT_MAX_OPERATIONS`] levels at 384 bytes each, on
/// top of the usual 2 MiB: bounded by the operation budget, a deep value is never a stack
/// overflow. (Only touched pages take memory.)
pub const STACK_SIZE: usize = (2 << 20) + DEFAULT_MAX_OPERATIONS as usize * 384;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: DEFAULT_MAX_OPERATIONS,
            max_time: Duration::from_millis(50),
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_outputs: 100,
            max_memory: 64 << 20,
            max_depth: 128,
            max_source: 64 << 10,
        }
    }
}

thread_local! {
    /// When the script running on this thread started; read by the progress callback.
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Scripts this thread may still compile or run for the work at hand ([`budgeted`]); none
    /// set: no bound (the router's workers).
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Scripts a piece of work may still compile or run, of its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most it may.
    pub limit: u32,
    /// What is left.
    pub left: u32,
    exceeded: bool,
}

impl Budget {
    /// A budget of `limit` scripts.
    pub fn new(limit: u32) -> Self {
        Self { limit, left: limit, exceeded: false }
    }
}

/// A piece of work ran more scripts than it was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this request would compile or run more than {limit} scripts, the most one request may; send fewer pigeons or letters at a time")]
pub struct TooManyScripts {
    /// The bound.
    pub limit: u32,
}

/// Runs `work` on this thread spending `budget`: each script compiled or run takes one; past
/// the last, each compile or run fails ([`ScriptError::Budget`]) and so does the whole work,
/// even when it made light of the script's failure. The same budget can be spent by several
/// pieces of work, one after the other.
pub fn budgeted<T>(budget: &mut Budget, work: impl FnOnce() -> T) -> Result<T, TooManyScripts> {
    struct Restore<'b> {
        outer: Option<Budget>,
        budget: &'b mut Budget,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            if let Some(spent) = BUDGET.with(|b| b.replace(self.outer)) {
                *self.budget = spent;
            }
        }
    }
    let outer = BUDGET.with(|b| b.replace(Some(*budget)));
    let restore = Restore { outer, budget };
    let done = work();
    drop(restore);
    if budget.exceeded {
        Err(TooManyScripts { limit: budget.limit })
    } else {
        Ok(done)
    }
}

/// Takes one script from this thread's budget, if it has one.
fn spend() -> Result<(), ScriptError> {
    BUDGET.with(|cell| {
        let Some(mut budget) = cell.get() else { return Ok(()) };
        let spent = budget.left.checked_sub(1);
        budget.left = spent.unwrap_or(0);
        budget.exceeded |= spent.is_none();
        cell.set(Some(budget));
        match spent {
            Some(_) => Ok(()),
            None => Err(ScriptError::Budget { limit: budget.limit }),
        }
    })
}

/// The one engine every script runs on: no `eval`, no `import`, no file, network or process
/// access, bounded operations, time, depth and sizes; `print` and `debug` go nowhere.
pub struct ScriptEngine {
    engine: Engine,
    limits: Limits,
}

const VARIABLES: [&str; 6] = ["payload", "tag", "id", "source", "key", "time"];

impl ScriptEngine {
    /// An engine with these limits.
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_strict_variables(true);
        engine.disable_symbol("eval");
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        let max_time = limits.max_time;
        let max_memory = isize::try_from(limits.max_memory).unwrap_or(isize::MAX);
        engine.on_progress(move |ops| {
            // One operation grows one value at most (and that by at most its own limit).
            if pigeon_alloc::held() > max_memory {
                return Some(Dynamic::from(MEMORY_LIMIT));
            }
            // Checking the clock every 1024 operations keeps the cost out of the hot loop.
            if ops % 1024 != 0 {
                return None;
            }
            let started = STARTED.with(Cell::get)?;
            (started.elapsed() > max_time).then(|| Dynamic::from("time limit"))
        });
        Self { engine, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles a script; errors give line and column.
    pub fn compile(&self, source: &str) -> Result<CompiledScript, ScriptError> {
        if source.len() > self.limits.max_source {
            return Err(ScriptError::Compile {
                line: 0,
                column: 0,
                message: format!(
                    "the script is {} bytes, more than the most a script may have ({})",
                    source.len(),
                    self.limits.max_source
                ),
            });
        }
        spend()?;
        let mut scope = Scope::new();
        for name in VARIABLES {
            scope.push(name, Dynamic::UNIT);
        }
        let ast = self.engine.compile_with_scope(&scope, source).map_err(|e| {
            let position = e.position();
            ScriptError::Compile {
                line: position.line().unwrap_or(0),
                column: position.position().unwrap_or(0),
                message: e.err_type().to_string(),
            }
        })?;
        Ok(CompiledScript { ast })
    }

    /// Runs a compiled script on one letter. `destinations` are the pigeon's, in order.
    pub fn run(
        &self,
        script: &CompiledScript,
        letter: &ScriptLetter<'_>,
        destinations: &[ScriptDestination],
    ) -> Result<Vec<ScriptOutput>, ScriptError> {
        let value = self.eval(script, letter)?;
        self.outputs(value, letter, destinations)
    }

    /// Runs a compiled filter expression on one letter: whether the letter passes. Anything
    /// but `true` or `false` is an error.
    pub fn test(&self, filter: &CompiledScript, letter: &ScriptLetter<'_>) -> Result<bool, ScriptError> {
        let value = self.eval(filter, letter)?;
        value
            .as_bool()
            .map_err(|kind| ScriptError::Output(format!("the filter gave {kind}, not true or false")))
    }

    fn eval(&self, script: &CompiledScript, letter: &ScriptLetter<'_>) -> Result<Dynamic, ScriptError> {
        spend()?;
        // What the run holds, from its input on; the value it returns is converted (and
        // dropped) after, and is bounded by the per-value limits.
        let _counted = pigeon_alloc::count();
        let payload = json::read(letter.payload).map_err(|e| ScriptError::Payload(e.to_string()))?;
        let key_text = letter.key.map(|k| String::from_utf8_lossy(k).into_owned());
        let mut scope = Scope::new();
        scope.push("payload", payload);
        scope.push_constant("tag", letter.tag.to_owned());
        scope.push_constant("id", letter.id.to_owned());
        scope.push_constant("source", letter.source.to_owned());
        scope.push_constant("key", key_text.map_or(Dynamic::UNIT, Dynamic::from));
        scope.push_constant("time", letter.time.map_or(Dynamic::UNIT, |t| Dynamic::from(t.to_owned())));

        STARTED.with(|s| s.set(Some(Instant::now())));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &script.ast);
        STARTED.with(|s| s.set(None));
        result.map_err(|e| runtime_error(&e, &self.limits))
    }

    fn outputs(
        &self,
        value: Dynamic,
        letter: &ScriptLetter<'_>,
        destinations: &[ScriptDestination],
    ) -> Result<Vec<ScriptOutput>, ScriptError> {
        if destinations.is_empty() {
            return Err(ScriptError::Output("the pigeon has no destinations".into()));
        }
        if value.is_unit() {
            return Ok(Vec::new());
        }
        if value.is_map() {
            let payload = to_json(value, "the returned map", self.limits.max_depth)?;
            return Ok(vec![ScriptOutput {
                dest: 0,
                tag: destinations[0].tag.clone(),
                key: letter.key.map(<[u8]>::to_vec),
                payload,
            }]);
        }
        // Cast without a copy: a clone here would copy every letter the script built.
        let items = value.try_cast_result::<rhai::Array>().map_err(|value| {
            ScriptError::Output(format!(
                "expected (), a map or an array of letters, got {}",
                value.type_name()
            ))
        })?;
        if items.len() > self.limits.max_outputs {
            return Err(ScriptError::Output(format!(
                "{} letters, more than the limit of {}",
                items.len(),
                self.limits.max_outputs
            )));
        }
        let max_depth = self.limits.max_depth;
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| output(i, item, letter, destinations, max_depth))
            .collect()
    }
}

fn output(
    i: usize,
    item: Dynamic,
    letter: &ScriptLetter<'_>,
    destinations: &[ScriptDestination],
    max_depth: usize,
) -> Result<ScriptOutput, ScriptError> {
    let what = format!("letter [{i}]");
    let mut map = item.try_cast_result::<Map>().map_err(|item| {
        ScriptError::Output(format!("{what} is {}, not a map #{{ payload, … }}", item.type_name()))
    })?;
    for field in map.keys() {
        if !["payload", "tag", "key", "dest"].contains(&field.as_str()) {
            return Err(ScriptError::Output(format!(
                "{what} has unknown field {field:?} (payload, tag, key, dest)"
            )));
        }
    }
    let payload =
        map.remove("payload").ok_or_else(|| ScriptError::Output(format!("{what} has no payload")))?;
    let dest = match map.remove("dest") {
        None => 0,
        Some(d) if d.is_int() => {
            let index = d.as_int().unwrap_or(-1);
            usize::try_from(index).ok().filter(|&i| i < destinations.len()).ok_or_else(|| {
                ScriptError::Output(format!(
                    "{what}: dest {index} is not one of the pigeon's {}",
                    destinations.len()
                ))
            })?
        }
        Some(d) if d.is_string() => {
            let name = d.into_string().unwrap_or_default();
            destinations.iter().position(|x| x.name == name || x.topic == name).ok_or_else(|| {
                let known: Vec<&str> = destinations.iter().map(|x| x.name.as_str()).collect();
                ScriptError::Output(format!(
                    "{what}: dest {name:?} is not one of the pigeon's ({})",
                    known.join(", ")
                ))
            })?
        }
        Some(d) => {
            return Err(ScriptError::Output(format!(
                "{what}: dest is {}, not an index or a name",
                d.type_name()
            )))
        }
    };
    let tag = match map.remove("tag") {
        None => destinations[dest].tag.clone(),
        Some(t) => {
            let tag = t
                .into_string()
                .map_err(|t| ScriptError::Output(format!("{what}: tag is {t}, not a string")))?;
            crate::tag::validate_tag(&tag).map_err(|e| ScriptError::Output(format!("{what}: {e}")))?;
            tag
        }
    };
    let key = match map.remove("key") {
        None => letter.key.map(<[u8]>::to_vec),
        Some(k) if k.is_unit() => None,
        Some(k) => Some(k.to_string().into_bytes()),
    };
    Ok(ScriptOutput { dest, tag, key, payload: to_json(payload, &what, max_depth)? })
}

/// Whether the JSON text `json` nests deeper than `max` arrays and objects, read byte by
/// byte (no recursion, whatever the depth).
fn nests_deeper(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn to_json(value: Dynamic, what: &str, max_depth: usize) -> Result<Vec<u8>, ScriptError> {
    let json = serde_json::to_vec(&json::Exact(&value))
        .map_err(|e| ScriptError::Output(format!("{what} is not JSON: {e}")))?;
    if nests_deeper(&json, max_depth) {
        return Err(ScriptError::Output(format!(
            "{what} nests deeper than {max_depth} levels, the most a letter's payload may"
        )));
    }
    Ok(json)
}

/// What the progress callback ends a run with when it holds too much.
const MEMORY_LIMIT: &str = "memory limit";

fn runtime_error(error: &rhai::EvalAltResult, limits: &Limits) -> ScriptError {
    use rhai::EvalAltResult as E;
    let message = match error {
        E::ErrorTooManyOperations(_) => "used up its operation budget (an endless loop?)".to_owned(),
        E::ErrorTerminated(token, _) if token.clone().into_string().is_ok_and(|t| t == MEMORY_LIMIT) => {
            format!("held more than {} MiB in all", limits.max_memory >> 20)
        }
        E::ErrorTerminated(..) => "ran past its time limit".to_owned(),
        E::ErrorStackOverflow(_) => "recursed too deep".to_owned(),
        E::ErrorDataTooLarge(what, _) => format!("{what} grew past its limit"),
        E::ErrorRuntime(value, _) => format!("threw {value}"),
        other => other.to_string(),
    };
    ScriptError::Runtime { line: error.position().line(), message }
}
