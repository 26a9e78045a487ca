enum TargetsModule {}
