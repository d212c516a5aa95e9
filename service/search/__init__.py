"""The application: enrolled voices (gallery), matching, enrollment, the VoiceSearch facade."""
