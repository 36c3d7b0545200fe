"""Analysis: real-bitstream evaluation, metrics, BD-rate, statistics, classical-codec anchors, tables and figures."""
