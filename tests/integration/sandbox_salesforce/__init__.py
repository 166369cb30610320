"""The Salesforce emulator (connectors/sandbox/salesforce/) driven by simple-salesforce over HTTPS."""
