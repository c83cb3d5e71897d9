"""samex connectors: HL7 v2 over MLLP and FHIR R4, in and out, and the simulated systems."""
