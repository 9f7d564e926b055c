//! The v1 field names and their OpenTelemetry GenAI aliases.

/// Every field the decoder understands. Scalar fields come first so their
/// discriminants index the decoder's scalar slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    EventId,
    Ts,
    Tenant,
    AgentId,
    Environment,
    Tool,
    Status,
    Actor,
    WorkflowId,
    Step,
    ToolCallId,
    ToolType,
    AgentVersion,
    McpServer,
    McpServerVersion,
    CredentialId,
    LatencyMs,
    ErrorType,
    TokensIn,
    TokensOut,
    Input,
    Output,
    Approval,
    Attributes,
}

/// Fields held as [`super::Scalar`] values: all before `Input`.
pub(super) const SCALAR_COUNT: usize = Field::Input as usize;
pub(super) const FIELD_COUNT: usize = Field::Attributes as usize + 1;

impl Field {
    pub(super) fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "event_id" => Field::EventId,
            "ts" => Field::Ts,
            "tenant" => Field::Tenant,
            "agent_id" | "gen_ai.agent.id" => Field::AgentId,
            "environment" => Field::Environment,
            "tool" | "gen_ai.tool.name" => Field::Tool,
            "status" => Field::Status,
            "actor" => Field::Actor,
            "workflow_id" | "gen_ai.conversation.id" => Field::WorkflowId,
            "step" => Field::Step,
            "tool_call_id" | "gen_ai.tool.call.id" => Field::ToolCallId,
            "tool_type" | "gen_ai.tool.type" => Field::ToolType,
            "agent_version" => Field::AgentVersion,
            "mcp_server" => Field::McpServer,
            "mcp_server_version" => Field::McpServerVersion,
            "credential_id" => Field::CredentialId,
            "latency_ms" => Field::LatencyMs,
            "error_type" | "error.type" => Field::ErrorType,
            "tokens_in" | "gen_ai.usage.input_tokens" => Field::TokensIn,
            "tokens_out" | "gen_ai.usage.output_tokens" => Field::TokensOut,
            "input" | "gen_ai.tool.call.arguments" => Field::Input,
            "output" | "gen_ai.tool.call.result" => Field::Output,
            "approval" => Field::Approval,
            "attributes" => Field::Attributes,
            _ => return None,
        })
    }

    /// The canonical v1 name, used in dead-letter details.
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::Ts => "ts",
            Field::Tenant => "tenant",
            Field::AgentId => "agent_id",
            Field::Environment => "environment",
            Field::Tool => "tool",
            Field::Status => "status",
            Field::Actor => "actor",
            Field::WorkflowId => "workflow_id",
            Field::Step => "step",
            Field::ToolCallId => "tool_call_id",
            Field::ToolType => "tool_type",
            Field::AgentVersion => "agent_version",
            Field::McpServer => "mcp_server",
            Field::McpServerVersion => "mcp_server_version",
            Field::CredentialId => "credential_id",
            Field::LatencyMs => "latency_ms",
            Field::ErrorType => "error_type",
            Field::TokensIn => "tokens_in",
            Field::TokensOut => "tokens_out",
            Field::Input => "input",
            Field::Output => "output",
            Field::Approval => "approval",
            Field::Attributes => "attributes",
        }
    }

    /// Identifiers become keys, file sort order, metric labels and what a
    /// responder reads in a terminal: control characters (ESC included)
    /// and invisible or direction-changing ones in them are refused rather
    /// than stored.
    pub(super) fn is_identifier(self) -> bool {
        matches!(
            self,
            Field::EventId
                | Field::Tenant
                | Field::AgentId
                | Field::Environment
                | Field::Tool
                | Field::WorkflowId
                | Field::CredentialId
                | Field::McpServer
                | Field::ToolCallId
                | Field::ToolType
                | Field::AgentVersion
                | Field::McpServerVersion
        )
    }
}

/// Characters that make text read other than it is: controls (ESC starts
/// terminal escapes), and every default-ignorable code point (Unicode's
/// `Default_Ignorable_Code_Point`: zero-width characters, bidirectional
/// marks, overrides and isolates, tag characters, variation selectors, the
/// soft hyphen, the combining grapheme joiner, the Hangul fillers, the
/// Mongolian vowel separator…), which render as nothing, so that
/// `support-bot` followed by U+E0020 would print as `support-bot`.
pub fn is_deceptive(c: char) -> bool {
    c.is_control() || is_default_ignorable(c)
}

/// Unicode 16's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt).
pub fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}
